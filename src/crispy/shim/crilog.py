"""The CRI container log format, written by the shim for kubelet (`kubectl logs`).

One record per line: `<timestamp> <stream> <tag> <content>\\n`, where the timestamp is
RFC 3339 in local time with nanoseconds and the offset (`2016-10-06T00:17:09.669794202Z`,
`...+02:00`), the stream is `stdout` or `stderr` and the tag is `F` for the end of a line
or `P` for a piece of one. As containerd's CRI logger does:
- a line ends at `\\n`; the `\\n` (and a `\\r` right before it) is not part of the content;
- a line longer than MAX_LINE bytes is cut into P records of MAX_LINE bytes, the rest
  follows as F when its newline comes;
- what is left without a newline when the stream ends is written as a P record (there is
  no F: the line never ended).

Standard library only (it runs in the shim); imported as a top-level module there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time

TYPE_CHECKING = False  # typing costs import time; only the type checker needs it
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_LINE = 16 << 10  # kubelet's and containerd's default max_container_log_line_size
LOG_MODE = 0o640


class Timestamps:
    """RFC 3339 timestamps with nanoseconds, local time; the costly part cached per second."""

    def __init__(self) -> None:
        self.second = -1
        self.head = ""
        self.zone = ""

    def format(self, ns: int) -> bytes:
        second, frac = divmod(ns, 1_000_000_000)
        if second != self.second:
            tm = time.localtime(second)
            self.head = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            off = tm.tm_gmtoff
            if off == 0:
                self.zone = "Z"
            else:
                sign = "+" if off > 0 else "-"
                hours, minutes = divmod(abs(off) // 60, 60)
                self.zone = f"{sign}{hours:02d}:{minutes:02d}"
            self.second = second
        return f"{self.head}.{frac:09d}{self.zone}".encode()


class Stream:
    """Cuts one output stream (stdout or stderr) into CRI records."""

    def __init__(self, name: str, max_line: int = MAX_LINE) -> None:
        self.name = name.encode()
        self.max_line = max_line
        self.pending = bytearray()  # the start of a line whose end has not come yet

    def feed(self, data: bytes, stamp: bytes) -> bytes:
        """The records for `data` (all stamped `stamp`), joined; the unfinished rest waits."""
        pending = self.pending
        pending += data
        out = bytearray()
        start = 0
        last = pending.rfind(b"\n")
        if last >= 0:
            lines = bytes(pending[:last]).split(b"\n")
            if b"\r" not in pending[:last] and max(map(len, lines)) <= self.max_line:
                # The common case, in one go: short lines without carriage returns.
                head = b"%s %s F " % (stamp, self.name)
                out += head
                out += (b"\n" + head).join(lines)
                out += b"\n"
            else:
                for line in lines:
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    pos = 0
                    while len(line) - pos > self.max_line:  # P records for an over-long line
                        self.record(out, stamp, b"P", line[pos : pos + self.max_line])
                        pos += self.max_line
                    self.record(out, stamp, b"F", line[pos:])
            start = last + 1
        # No newline yet but more than a line: P records. A last \r may be half of a \r\n.
        while len(pending) - start - (pending[-1:] == b"\r") > self.max_line:
            self.record(out, stamp, b"P", pending[start : start + self.max_line])
            start += self.max_line
        del pending[:start]
        return bytes(out)

    def finish(self, stamp: bytes) -> bytes:
        """At the end of the stream: what is left without a newline, as a P record."""
        out = bytearray()
        if self.pending:
            self.record(out, stamp, b"P", self.pending)
            self.pending = bytearray()
        return bytes(out)

    def record(self, out: bytearray, stamp: bytes, tag: bytes, content: bytes | bytearray) -> None:
        out += stamp
        out += b" "
        out += self.name
        out += b" "
        out += tag
        out += b" "
        out += content
        out += b"\n"


class LogFile:
    """A container's CRI log file: appended to, reopened after rotation, and never a reason
    to stop reading the container's output (a failed write drops the records, reported once
    until a write succeeds again).

    `root` is the trusted directory (the pod's log_directory; by default the file's own
    directory): it is made if missing and may be reached through symlinks. Below it nothing
    is followed: each component is opened relative to its parent with O_NOFOLLOW (missing
    dirs made), and the file itself too, so a symlink planted in the log directory can't
    send the output elsewhere. The file must be a regular file (or a character device such
    as /dev/null): a FIFO or socket planted there is refused, never blocked on."""

    def __init__(
        self, path: str, report: Callable[[str], None] | None = None, root: str = ""
    ) -> None:
        self.path = path
        self.root = root or os.path.dirname(path)
        self.parts = below(self.root, path)
        self.report = report
        self.failing = False
        self.dropped = 0  # bytes of records lost to write errors
        self.fd: int | None = self.open()

    def open(self) -> int:
        """Open (and create, with its directories) the log file; raises OSError."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        dirfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in self.parts[:-1]:
                dirfd = _enter(dirfd, part)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            flags |= os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
            name = self.parts[-1]
            try:
                fd = os.open(name, flags, LOG_MODE, dir_fd=dirfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise OSError(e.errno, f"{name} is a symbolic link; not following it") from e
                raise
        finally:
            os.close(dirfd)
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                raise OSError(errno.EINVAL, f"{name} is not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reopen(self) -> None:
        """Start a new file at `path` (logrotate renamed the old one); on failure (OSError)
        the old file stays in use."""
        fd = self.open()
        self.close()
        self.fd = fd
        self.failing = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.fd is None:
            self.dropped += len(data)
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.dropped += len(view)
            if not self.failing and self.report is not None:
                self.report(f"cannot write to {self.path}: {e.strerror or e}; dropping output")
            self.failing = True
        else:
            self.failing = False

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def below(root: str, path: str) -> list[str]:
    """The components of `path` below the absolute dir `root`; ValueError if it is not
    strictly inside it (through `..` or otherwise) or holds a NUL."""
    if "\0" in path or "\0" in root:
        raise ValueError(f"log path {path!r} contains a NUL byte")
    if not os.path.isabs(root) or not os.path.isabs(path):
        raise ValueError(f"log path {path!r} and its directory {root!r} must be absolute")
    head = [p for p in root.split("/") if p not in ("", ".")]
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in head or ".." in parts:
        raise ValueError(f"log path {path!r} contains a '..' component")
    if parts[: len(head)] != head or len(parts) <= len(head) or path.endswith("/"):
        raise ValueError(f"log path {path!r} names no file inside {root!r}")
    return parts[len(head) :]


def _enter(dirfd: int, name: str) -> int:
    """The dir `name` in `dirfd` (made if missing), never through a symlink; closes dirfd."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(name, flags, dir_fd=dirfd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened (or not) next
                os.mkdir(name, 0o755, dir_fd=dirfd)
            return os.open(name, flags, dir_fd=dirfd)
        except NotADirectoryError as e:  # a symlink (O_NOFOLLOW) or a file
            raise OSError(e.errno, f"{name} is not a directory (or is a symbolic link)") from e
    finally:
        os.close(dirfd)
