"""The OCI runtime's command line (runc, crun, runsc): the one place an argv is built.

Two sides run the runtime. The shim runs create, start, kill, delete, exec and wait as its
own children, with paths only it knows (its console socket, an exec's process file); crispyd
runs update through the shim, and kill and delete itself when no shim is left. Both build
their argv here, from a prefix that `crispy.oci.runtime.OciRuntime.prefix` makes (binary,
`--root`, the handler's options, and nsenter for a runtime that runs in the pod's netns):
the shim receives that prefix, never whole command lines.

Standard library only and quick to import: the shim (a program of its own) loads it as a
top-level module.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing costs the shim import time; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Sequence

LOG_NAME = "runtime.log"  # in the bundle: the runtime's JSON log (--log-format json)
LOG_TAIL = 65536  # the last error is near the end; a long log is not read whole


def log_file(bundle: str) -> str:
    return os.path.join(bundle, LOG_NAME)


class RuntimeArgv:
    """The argv of each runtime subcommand crispy uses, for one prefix and (optionally) one
    JSON log file, which then holds the runtime's errors (`last_error`)."""

    def __init__(self, prefix: Sequence[str], log: str = "") -> None:
        self.prefix = list(prefix)
        self.log = log

    def _argv(self, *args: str) -> list[str]:
        logging = ["--log", self.log, "--log-format", "json"] if self.log else []
        return [*self.prefix, *logging, *args]

    def create(self, cid: str, bundle: str, pid_file: str, console_socket: str = "") -> list[str]:
        console = ["--console-socket", console_socket] if console_socket else []
        return self._argv("create", "--bundle", bundle, "--pid-file", pid_file, *console, cid)

    def start(self, cid: str) -> list[str]:
        return self._argv("start", cid)

    def kill(self, cid: str, signal: int | str, all: bool = False) -> list[str]:
        return self._argv("kill", *(["--all"] if all else []), cid, str(signal))

    def delete(self, cid: str, force: bool = False) -> list[str]:
        return self._argv("delete", *(["--force"] if force else []), cid)

    def exec(
        self, cid: str, process_file: str, pid_file: str, console_socket: str = ""
    ) -> list[str]:
        """A detached exec: the runtime exits once the process runs (the caller reaps it)."""
        console = ["--console-socket", console_socket] if console_socket else []
        args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
        return self._argv(*args, *console, cid)

    def update(self, cid: str) -> list[str]:
        """Set the container's resources to the OCI LinuxResources JSON read from stdin."""
        return self._argv("update", "--resources", "-", cid)

    def state(self, cid: str) -> list[str]:
        return self._argv("state", cid)

    def wait(self, cid: str) -> list[str]:
        """Block until the container exits (runsc: its init is not the shim's child)."""
        return self._argv("wait", cid)

    def features(self) -> list[str]:
        return self._argv("features")

    def version(self) -> list[str]:
        return self._argv("--version")

    def last_error(self) -> str:
        return last_error(self.log) if self.log else ""


def last_error(path: str) -> str:
    """The last error (or fatal) message runc/crun wrote to a JSON log; "" if none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg") or "")
    return ""
