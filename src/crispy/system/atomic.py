"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

The data goes to a temp file of a unique name beside the target (created with O_EXCL,
named with a leading dot, which directory scans such as the CNI cache's skip), which is
fsynced, given its mode and renamed over the target; then the directory is fsynced, so
the rename survives a crash too. Whatever fails on the way removes the temp file.

Standard library only, and nothing slow to import: the shim (crispy/shim, a program of
the standard library alone) uses it as well, loading this file by its path when it runs
outside the crispy package (see crispy/shim/containers.py).
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing costs the shim import time; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

_ATTEMPTS = 100  # temp names tried before giving up (each taken one is a leftover)


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    for _ in range(_ATTEMPTS):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {directory} for {name}")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` (with `mode`,
    whatever the umask) when the block ends without an error, and is dropped otherwise.
    The directory must exist."""
    directory = os.path.dirname(path) or "."
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_atomic(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` (str is written as UTF-8), atomically and durably."""
    with atomic_file(path, mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)


__all__ = ["atomic_file", "write_atomic"]
