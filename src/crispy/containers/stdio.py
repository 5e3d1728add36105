"""crispyd's ends of a streaming exec or attach: descriptors the pod's shim works with.

An exec'd process gets pipes made here (the shim hands the other ends to `runtime exec`) or
a terminal whose master the shim sends back; an attachment gets pipes the shim copies the
container's output into and reads its stdin from. The streaming server reads and writes
these; the shim supervises the process (it reaps it and reports its exit).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from crispy.oci.shim_client import ShimClient, ShimError
from crispy.shim.streams import set_winsize
from crispy.system.fdio import FdReader, FdWriter

EOT = b"\x04"  # the end of input on a terminal in canonical mode


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


class Stdio:
    """The streams the client asked for; closing them is how the other side learns it."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.stdin: FdWriter | None = None
        self.stdout: FdReader | None = None
        self.stderr: FdReader | None = None

    async def close_stdin(self) -> None:
        """The client's stdin ended: EOF for a pipe, ^D on a terminal."""
        if self.stdin is None:
            return
        if self.tty:
            with contextlib.suppress(OSError):
                await self.stdin.write(EOT)
        self.stdin.close()
        self.stdin = None

    def close(self) -> None:
        for end in (self.stdin, self.stdout, self.stderr):
            if end is not None:
                end.close()


class ExecProcess(Stdio):
    """A process `runtime exec` started through the shim, with our ends of its stdio."""

    def __init__(self, shim: ShimClient, tty: bool) -> None:
        super().__init__(tty)
        self.shim = shim
        self.pid = 0

    @classmethod
    async def start(
        cls,
        shim: ShimClient,
        container_id: str,
        process: dict[str, Any],
        *,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> ExecProcess:
        tty = bool(process.get("terminal"))
        self = cls(shim, tty)
        theirs: list[int] = []  # the process's ends: the shim gets copies, ours are closed
        try:
            if tty:
                # The terminal's master is its output, its input (a dup) and what is resized;
                # it stays open even if no output was asked for, or the process would lose it.
                self.pid, master = await shim.exec(container_id, process, [])
                assert master is not None
                self.stdout = FdReader(master)
                if stdin:
                    self.stdin = FdWriter(os.dup(master))
                return self
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            theirs.append(null)
            fds = [null, null, null]
            if stdin:
                r, w = _pipe()
                theirs.append(r)
                self.stdin = FdWriter(w)
                fds[0] = r
            for i, wanted in ((1, stdout), (2, stderr)):
                if wanted:
                    r, w = _pipe()
                    theirs.append(w)
                    reader = FdReader(r)
                    fds[i] = w
                    if i == 1:
                        self.stdout = reader
                    else:
                        self.stderr = reader
            self.pid, _ = await shim.exec(container_id, process, fds)
            return self
        except BaseException:
            self.close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)

    def resize(self, width: int, height: int) -> None:
        if self.tty and self.stdout is not None and self.stdout.fd is not None:
            with contextlib.suppress(OSError):
                set_winsize(self.stdout.fd, width, height)

    async def wait(self) -> dict[str, Any]:
        """The exit record once the shim reaped it (the shim forgets it as it answers)."""
        return await self.shim.call("wait", pid=self.pid, timeout=None, forget=True)

    async def kill(self) -> None:
        with contextlib.suppress(ShimError):
            await self.shim.signal(self.pid, signal.SIGKILL)


class Attachment(Stdio):
    """Pipes to a running container's stdio, held by its shim."""

    def __init__(self, shim: ShimClient, container_id: str, tty: bool) -> None:
        super().__init__(tty)
        self.shim = shim
        self.container_id = container_id

    @classmethod
    async def open(
        cls,
        shim: ShimClient,
        container_id: str,
        *,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Attachment:
        self = cls(shim, container_id, tty)
        theirs: dict[str, int] = {}
        try:
            if stdin:
                r, w = _pipe()
                theirs["stdin"] = r
                self.stdin = FdWriter(w)
            if stdout:
                r, w = _pipe()
                theirs["stdout"] = w
                self.stdout = FdReader(r)
            if stderr and not tty:
                r, w = _pipe()
                theirs["stderr"] = w
                self.stderr = FdReader(r)
            await shim.attach(container_id, **theirs)
            return self
        except BaseException:
            self.close()
            raise
        finally:
            for fd in theirs.values():
                os.close(fd)

    async def resize(self, width: int, height: int) -> None:
        with contextlib.suppress(ShimError):
            await self.shim.resize(self.container_id, width, height)

    async def wait(self) -> dict[str, Any]:
        return await self.shim.wait_container(self.container_id, None)
