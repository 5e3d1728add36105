"""The lock that keeps two crispyd processes off the same root and state dirs."""

from __future__ import annotations

import fcntl
import os


class LockError(Exception):
    pass


class DirLock:
    """An exclusive flock on `<dir>/crispyd.lock`, holding the owner's pid.

    flock locks die with the process, so a crispyd killed with -9 never leaves a
    stale lock behind: the next one simply takes it.
    """

    NAME = "crispyd.lock"

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, self.NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        # Root and state hold every container's rootfs, logs and sockets: root only.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockError(
                f"another crispyd (pid {holder}) is already running with {self.directory} "
                f"(it holds {self.path}); stop it first or use other --root/--state dirs"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
