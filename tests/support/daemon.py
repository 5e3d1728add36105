"""Start a real crispyd on temp dirs and a temp socket, for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from crispy.api import pb
from crispy.cli.client import CriClient

BIN_DIR = Path(sys.executable).parent


def crispy_bin(name: str) -> str:
    """The console script installed next to this Python (crispyd, crispy, crispy-shim)."""
    return str(BIN_DIR / name)


def default_config(base: Path) -> str:
    """A config that keeps the daemon off every host-wide path."""
    return (
        'log_level = "debug"\n'
        "[cni]\n"
        f'conf_dir = "{base / "net.d"}"\n'
        "[registry]\n"
        f'hosts_dir = "{base / "certs.d"}"\n'
    )


class Crispyd:
    """One crispyd process with its own root, state, socket and config."""

    def __init__(self, base: Path, config: str | None = None, args: list[str] | None = None):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        (base / "net.d").mkdir(exist_ok=True)
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "crispy.sock"
        self.config_path = base / "config.toml"
        self.config_path.write_text(default_config(base) if config is None else config)
        self.log_path = base / "crispyd.log"
        self.extra_args = args or []
        self.env: dict[str, str] = {}  # added to the test's environment at each start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [
            crispy_bin("crispyd"),
            "--config",
            str(self.config_path),
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--listen",
            self.endpoint,
            *self.extra_args,
        ]

    def start(self, wait: bool = True, timeout: float = 20.0) -> Crispyd:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crispyd exited with {self.proc.returncode}:\n{self.log()}")
            # A plain connect first: a gRPC channel that met the socket of a killed crispyd
            # backs off for up to a second before it tries again.
            if self._accepting():
                with CriClient(self.endpoint, timeout=2) as client:
                    try:
                        client.runtime.Version(pb.VersionRequest(), timeout=2)
                        return
                    except grpc.RpcError:
                        pass
            time.sleep(0.02)
        raise TimeoutError(f"crispyd not ready after {timeout}s:\n{self.log()}")

    def _accepting(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill looks like to the next crispyd."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self, timeout: float = 30.0) -> CriClient:
        return CriClient(self.endpoint, timeout=timeout)


def run_crispyd(
    base: Path, config: str | None = None, args: list[str] | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run crispyd expecting it to exit on its own (bad config, lock held)."""
    d = Crispyd(base, config, args)
    return subprocess.run(d.command(), capture_output=True, text=True, timeout=timeout)


def crispy_cli(endpoint: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real `crispy` command line against `endpoint`."""
    return subprocess.run(
        [crispy_bin("crispy"), "-r", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def crispy_ok(endpoint: str, *args: str) -> str:
    """`crispy` that must succeed; its stdout."""
    r = crispy_cli(endpoint, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout
