"""A throwaway local OCI distribution registry (Debian's ``docker-registry``) for tests.

Only the standard library is used, and only loopback addresses are ever contacted.  Requests go
through ``http.client`` rather than ``urllib`` so that proxy environment variables can never
redirect traffic meant for 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

from .loopback import LoopbackServer

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


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` value into its scheme and its quoted parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Registry(LoopbackServer):
    """A ``docker-registry serve`` process bound to 127.0.0.1 on a free port.

    ``workdir`` receives config.yml, the storage root and the registry's log; without one a
    temporary directory is made and removed again by :meth:`stop`.

    ``auth`` becomes the config's ``auth`` section (e.g. ``{"htpasswd": {...}}`` or
    ``{"token": {...}}``); ``credentials`` (username, password) let :meth:`request` answer
    the registry's Basic or Bearer challenges, so the push helpers work against it too.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        binary: str = REGISTRY_BINARY,
        auth: dict[str, Any] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
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
        self.auth = auth
        self.credentials = credentials
        self._tokens: dict[tuple[str, str, str], str] = {}  # (realm, service, scope) -> token

    # -- lifecycle ---------------------------------------------------------------------------

    def not_running(self) -> Exception:
        return RegistryError("registry is not running")

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
        if self.auth:
            config["auth"] = self.auth
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
        # With an auth section even /v2/ wants credentials; a 401 still proves it is serving.
        ok = (200, 401) if self.auth else (200,)
        return resp.status in ok and api.startswith("registry/2")

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

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        authenticate: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request to ``path`` (path+query on this registry); never raises on a status.

        With ``credentials`` set (and ``authenticate``), a 401 challenge is answered once:
        Basic with the credentials, Bearer with a token fetched from the challenge's realm.
        """
        if self.port is None:
            raise RegistryError("registry is not running")
        result = self._send(method, path, body, headers or {})
        challenge = result[1].get("WWW-Authenticate", "")
        if result[0] != 401 or not (authenticate and self.credentials and challenge):
            return result
        authorization = self._authorization(challenge)
        if authorization is None:
            return result
        result = self._send(method, path, body, {**(headers or {}), "Authorization": authorization})
        if result[0] == 401 and authorization.startswith("Bearer "):
            # The cached token may have expired: one more try with a fresh one.
            authorization = self._authorization(challenge, fresh=True) or authorization
            result = self._send(
                method, path, body, {**(headers or {}), "Authorization": authorization}
            )
        return result

    def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port or 0, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def _authorization(self, challenge: str, *, fresh: bool = False) -> str | None:
        assert self.credentials is not None
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return basic_authorization(*self.credentials)
        if scheme != "bearer" or "realm" not in params:
            return None
        key = (params["realm"], params.get("service", ""), params.get("scope", ""))
        if fresh or key not in self._tokens:
            self._tokens[key] = fetch_token(*key, credentials=self.credentials)
        return f"Bearer {self._tokens[key]}"

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


def fetch_token(
    realm: str, service: str, scope: str, *, credentials: tuple[str, str] | None = None
) -> str:
    """A bearer token from a (loopback) token server, by the Docker token spec's GET flow."""
    url = urllib.parse.urlsplit(realm)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost"):
        raise RegistryError(f"refusing a token realm off loopback: {realm}")
    params = [("service", service)] if service else []
    params += [("scope", s) for s in scope.split(" ") if s]
    query = "&".join(q for q in (url.query, urllib.parse.urlencode(params)) if q)
    headers = {"Authorization": basic_authorization(*credentials)} if credentials else {}
    conn = http.client.HTTPConnection("127.0.0.1", url.port or 80, timeout=30)
    try:
        conn.request("GET", f"{url.path or '/'}?{query}", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RegistryError(f"token request to {realm}: HTTP {resp.status}", resp.status, data)
    reply = json.loads(data)
    token = reply.get("token") or reply.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"token server {realm} answered without a token", resp.status, data)
    return token
