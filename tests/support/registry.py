"""A throwaway local OCI distribution registry (Debian's ``docker-registry``) for tests.

Only the standard library is used, and only loopback addresses are ever contacted.  Requests go
through ``http.client`` rather than ``urllib`` so that proxy environment variables can never
redirect traffic meant for 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import IO

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5


class RegistryError(RuntimeError):
    """An unexpected HTTP status from the registry, or a registry that failed to start."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def append_digest(location: str, digest: str) -> str:
    """Turn an upload ``Location`` (absolute or relative, with or without a query) into the
    path+query to PUT to, with ``digest=`` appended."""
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.urlencode({"digest": digest})
    query = f"{parts.query}&{query}" if parts.query else query
    return urllib.parse.urlunsplit(("", "", parts.path or "/", query, ""))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Registry:
    """A ``docker-registry serve`` process bound to 127.0.0.1 on a free port.

    ``workdir`` receives config.yml, the storage root and the registry's log; without one a
    temporary directory is made and removed again by :meth:`stop`.
    """

    def __init__(self, workdir: Path | None = None, *, binary: str = REGISTRY_BINARY) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="crispy-registry-")) if workdir is None else workdir
        )
        self.storage = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.binary = binary
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        if self.port is None:
            raise RegistryError("registry is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        last_error = ""
        # The free port is found by binding and releasing it, so another process may grab it
        # before the registry binds: then the registry exits with EADDRINUSE and we try again.
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            error = self._try_start(port)
            if error is None:
                return self
            if "address already in use" not in error:
                raise RegistryError(f"docker-registry failed to start:\n{error}")
            last_error = error
        raise RegistryError(f"no free port after {PORT_ATTEMPTS} attempts:\n{last_error}")

    def _write_config(self, port: int) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{port}"},
        }
        # JSON is valid YAML, so no YAML library is needed.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def _try_start(self, port: int) -> str | None:
        """Start on ``port``; None once it serves /v2/, else the registry's log output."""
        self._write_config(port)
        # REGISTRY_* variables override config.yml inside the registry; don't inherit any.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._exited()
            if self._answers(port) and self._proc.poll() is None:
                return None
            time.sleep(0.02)
        self._terminate()
        log = self.log_path.read_text(errors="replace")
        raise RegistryError(f"docker-registry did not answer within {START_TIMEOUT}s:\n{log}")

    def _answers(self, port: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                conn.request("GET", "/v2/")
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
        except OSError:
            return False
        # The header tells our registry apart from whatever else may have taken the port.
        api = resp.getheader("Docker-Distribution-Api-Version", "")
        return resp.status == 200 and api.startswith("registry/2")

    def _exited(self) -> str:
        rc = self._proc.returncode if self._proc else None
        self._close()
        self.port = None
        log = self.log_path.read_text(errors="replace")
        return f"exit status {rc}\n{log}"

    def _terminate(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close()

    def _close(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()
        self.port = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request to ``path`` (path+query on this registry); never raises on a status."""
        if self.port is None:
            raise RegistryError("registry is not running")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def _expect(
        self,
        statuses: tuple[int, ...],
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPMessage, bytes]:
        status, resp_headers, data = self.request(method, path, body=body, headers=headers)
        if status not in statuses:
            text = data[:2000].decode(errors="replace")
            raise RegistryError(f"{method} {path}: HTTP {status}: {text}", status, data)
        return resp_headers, data

    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repo`` (monolithic POST+PUT); returns its digest."""
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        headers, _ = self._expect((202,), "POST", f"/v2/{repo}/blobs/uploads/")
        location = headers.get("Location")
        if not location:
            raise RegistryError(f"upload to {repo} answered without a Location")
        put_headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }
        self._expect((201,), "PUT", append_digest(location, digest), body=data, headers=put_headers)
        return digest

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self._expect((200,), "GET", f"/v2/{repo}/blobs/{digest}")[1]

    def push_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest (or index) under a tag or digest ``ref``; returns its digest."""
        digest = sha256_digest(data)
        headers, _ = self._expect(
            (201,),
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            body=data,
            headers={"Content-Type": media_type},
        )
        served = headers.get("Docker-Content-Digest")
        if served and served != digest:
            raise RegistryError(f"registry stored {repo}:{ref} as {served}, expected {digest}")
        return digest

    def get_manifest(
        self, repo: str, ref: str, accept: str | list[str]
    ) -> tuple[bytes, http.client.HTTPMessage]:
        accept_value = accept if isinstance(accept, str) else ", ".join(accept)
        headers, data = self._expect(
            (200,), "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept_value}
        )
        return data, headers

    def delete_manifest(self, repo: str, digest: str) -> None:
        self._expect((202,), "DELETE", f"/v2/{repo}/manifests/{digest}")
