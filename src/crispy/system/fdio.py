"""Non-blocking I/O on raw descriptors (pipes, pty masters, sockets) from asyncio.

asyncio's pipe transports own and close their descriptor and buffer without limit; the
streaming server wants plain awaitable reads and writes with back-pressure on descriptors it
got from the shim, so these wait for readiness with add_reader/add_writer and then do the
system call themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os

CHUNK = 256 * 1024


async def wait_readable(fd: int) -> None:
    await _wait(fd, write=False)


async def wait_writable(fd: int) -> None:
    await _wait(fd, write=True)


async def _wait(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


class FdReader:
    """Reads from a non-blocking descriptor it owns; b"" at EOF (EIO of a pty counts)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd

    async def read(self, n: int = CHUNK) -> bytes:
        while self.fd is not None:
            try:
                return os.read(self.fd, n)
            except (BlockingIOError, InterruptedError):
                await wait_readable(self.fd)
            except OSError as e:
                if e.errno == errno.EIO:  # a terminal whose other side is all closed
                    return b""
                raise
        return b""

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class FdWriter:
    """Writes everything to a non-blocking descriptor it owns, waiting while it is full."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.fd is None:
                raise BrokenPipeError("closed")
            try:
                view = view[os.write(self.fd, view) :]
            except (BlockingIOError, InterruptedError):
                await wait_writable(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
