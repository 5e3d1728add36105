"""`crispy logs`: a container's CRI log file, read straight from disk as crictl does.

The file is the one ContainerStatus names (log_path), in the CRI logging format: one
record a line, `<RFC 3339 time> <stdout|stderr> <P|F> <content>`, where P marks a
partial line the runtime split (too long, or not yet ended) and F the record that ends
it. Records are joined back into lines and each goes to the stream it came from.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import grpc

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.cli.lookups import IDLookupError, container_status, resolve_container

POLL = 0.1  # seconds between reads of a file that has nothing new
STATUS_EVERY = 0.5  # seconds between ContainerStatus calls while following
QUIET = 0.2  # after the container exits: the file must stay still this long
DRAIN_MAX = 2.0  # ... but no longer than this
CHUNK = 65536


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="print a container's log (its CRI log file)")
    p.add_argument("id", metavar="ID", help="container ID or unique prefix")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the container exits"
    )
    p.add_argument(
        "--tail",
        type=int,
        default=None,
        metavar="N",
        help="only the last N lines (default: all)",
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="start each line with its time")
    p.add_argument(
        "--since",
        type=since_ns,
        default=None,
        metavar="TIME",
        help="only lines since an RFC 3339 time or a duration ago (42m, 1h30m, 10s)",
    )
    p.set_defaults(func=cmd_logs)


# -- times -----------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNIT_NS["h"] = 3600 * 10**9
_RFC3339 = re.compile(rb"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:?\d\d)$")


def duration_ns(value: str) -> int:
    """A Go duration (`1h30m`, `42m`, `1.5s`, `300ms`) in nanoseconds; ValueError if not one."""
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not value or pos != len(value):
        raise ValueError(value)
    return int(total)


def timestamp_ns(value: bytes | str) -> int | None:
    """An RFC 3339 time (nanoseconds and all) as Unix nanoseconds; None if it is not one."""
    raw = value.encode() if isinstance(value, str) else value
    m = _RFC3339.match(raw.strip())
    if not m:
        return None
    zone = m.group(3).decode().upper().replace("Z", "+00:00")
    try:
        t = datetime.fromisoformat(m.group(1).decode().replace("t", "T") + zone)
    except ValueError:
        return None
    fraction = (m.group(2) or b"").decode()[:9].ljust(9, "0")
    return int(t.timestamp()) * 1_000_000_000 + int(fraction)


def since_ns(value: str) -> int:
    """`--since`: an RFC 3339 time, or a duration back from now."""
    ns = timestamp_ns(value)
    if ns is not None:
        return ns
    try:
        return time.time_ns() - duration_ns(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give an RFC 3339 time (2024-05-01T12:00:00Z) or a duration (42m)"
        ) from None


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line as the container wrote it: the time of its first record, and its stream."""

    timestamp: bytes
    stream: bytes
    data: bytes  # ends in a newline unless the container never ended it


def parse_record(raw: bytes) -> tuple[bytes, bytes, bool, bytes] | None:
    """(time, stream, partial, content) of one CRI log line; None if it is not one."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return None
    ts, stream, tags = parts[0], parts[1], parts[2]
    # Tags are `:`-separated; the first says partial (P) or full (F).
    return ts, stream, tags.split(b":", 1)[0] == b"P", parts[3] if len(parts) == 4 else b""


class Joiner:
    """Partial records joined to lines, per stream (stdout's P, stderr's F, stdout's F)."""

    def __init__(self) -> None:
        self.pending: dict[bytes, tuple[bytes, list[bytes]]] = {}

    def feed(self, raw: bytes) -> Line | None:
        record = parse_record(raw)
        if record is None:
            return None
        ts, stream, partial, content = record
        first_ts, parts = self.pending.pop(stream, (ts, []))
        parts.append(content)
        if partial:
            self.pending[stream] = (first_ts, parts)
            return None
        return Line(first_ts, stream, b"".join(parts) + b"\n")

    def flush(self) -> list[Line]:
        """The lines still open: the container ended them with no newline."""
        lines = [Line(ts, stream, b"".join(parts)) for stream, (ts, parts) in self.pending.items()]
        self.pending.clear()
        return sorted(lines, key=lambda line: line.timestamp)


class Printer:
    """Lines to stdout or stderr as they were written, optionally timed, optionally since T."""

    def __init__(
        self,
        timestamps: bool = False,
        since: int | None = None,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
    ) -> None:
        self.timestamps = timestamps
        self.since = since
        self.out = stdout or sys.stdout.buffer
        self.err = stderr or sys.stderr.buffer
        self.last: BinaryIO | None = None

    def wanted(self, line: Line) -> bool:
        if self.since is None:
            return True
        ns = timestamp_ns(line.timestamp)
        return ns is None or ns >= self.since

    def write(self, lines: Iterable[Line]) -> None:
        for line in lines:
            if not self.wanted(line):
                continue
            f = self.err if line.stream == b"stderr" else self.out
            if self.last is not None and f is not self.last:
                self.last.flush()  # keeps the two streams in order on one terminal
            self.last = f
            if self.timestamps:
                f.write(line.timestamp + b" ")
            f.write(line.data)
        self.flush()

    def flush(self) -> None:
        for f in (self.out, self.err):
            f.flush()


# -- the file --------------------------------------------------------------------------------


class LogError(Exception):
    """The log can't be read: printed, exit 1."""


class LogFile:
    """The log file, read by whole lines; reopened by path when it is rotated."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.rest = b""  # a line the writer has not finished yet

    def open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise LogError(f"{self.path}: {e.strerror or e}") from None
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_lines(self) -> list[bytes]:
        """Every whole line written since the last call."""
        chunks = [self.rest]
        while chunk := os.read(self.fd, CHUNK):
            chunks.append(chunk)
        data = b"".join(chunks)
        *lines, self.rest = data.split(b"\n")
        return lines

    def take_rest(self) -> list[bytes]:
        """The unfinished line as it is, once nothing more will come."""
        rest, self.rest = self.rest, b""
        return [rest] if rest else []

    def rotated(self) -> bool:
        """The path names another file now (the old one was renamed away and reopened)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, not yet reopened: the old file still gets the writes
        own = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def check_rotation(self) -> list[bytes]:
        """After EOF: switch to a new file at the path (the old one's rest first)."""
        own = os.fstat(self.fd)
        if own.st_size < os.lseek(self.fd, 0, os.SEEK_CUR):
            os.lseek(self.fd, 0, os.SEEK_SET)  # truncated in place (copytruncate)
            self.rest = b""
            return []
        if not self.rotated():
            return []
        lines = self.read_lines() + self.take_rest()
        self.close()
        if not self.open():
            raise LogError(f"{self.path}: gone while being followed")
        return lines


def _lines(joiner: Joiner, raws: Iterable[bytes]) -> list[Line]:
    return [line for raw in raws if (line := joiner.feed(raw)) is not None]


def print_log(
    path: str,
    printer: Printer,
    tail: int | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Print the log at `path`; with `alive`, follow it until that says the container ended.

    `tail` keeps only the last lines already written (negative or None: all of them).
    """
    log = LogFile(path)
    next_check = 0.0
    while not log.open():
        if alive is None:
            raise LogError(f"{path}: no log file (has the container started?)")
        if time.monotonic() >= next_check:
            if not alive():
                return
            next_check = time.monotonic() + STATUS_EVERY
        time.sleep(POLL)
    try:
        joiner = Joiner()
        keep: deque[Line] = deque(maxlen=tail if tail is not None and tail >= 0 else None)
        lines = _lines(joiner, log.read_lines())
        if alive is None:
            lines += _lines(joiner, log.take_rest()) + joiner.flush()
        keep.extend(line for line in lines if printer.wanted(line))
        printer.write(keep)
        if alive is None:
            return
        _follow(log, joiner, printer, alive)
    finally:
        log.close()


def _follow(log: LogFile, joiner: Joiner, printer: Printer, alive: Callable[[], bool]) -> None:
    next_check = time.monotonic() + STATUS_EVERY
    while True:
        raws = log.read_lines() or log.check_rotation()
        if raws:
            printer.write(_lines(joiner, raws))
            continue
        if time.monotonic() >= next_check:
            if not alive():
                break
            next_check = time.monotonic() + STATUS_EVERY
        time.sleep(POLL)
    # The container is gone; its last words may still be on their way to the file.
    quiet_since = start = time.monotonic()
    while time.monotonic() - quiet_since < QUIET and time.monotonic() - start < DRAIN_MAX:
        raws = log.read_lines() or log.check_rotation()
        if raws:
            printer.write(_lines(joiner, raws))
            quiet_since = time.monotonic()
        else:
            time.sleep(POLL / 2)
    printer.write(_lines(joiner, log.take_rest()) + joiner.flush())


# -- the command -----------------------------------------------------------------------------


def container_alive(client: CriClient, cid: str) -> bool:
    """Created or running: its log may still grow. A removed container is not."""
    try:
        state = container_status(client, cid).status.state
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return state in (pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING)


def _quiet_broken_pipe() -> None:
    """`crispy logs | head`: the reader left; drop the rest rather than print a traceback."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def cmd_logs(client: CriClient, args: argparse.Namespace) -> int:
    try:
        cid = resolve_container(client, args.id)
    except IDLookupError as e:
        print(f"crispy logs: {e}", file=sys.stderr)
        return 1
    status = container_status(client, cid).status
    if not status.log_path:
        print(
            f"crispy logs: container {cid} has no log file (its pod has no log_directory)",
            file=sys.stderr,
        )
        return 1
    printer = Printer(args.timestamps, args.since)
    alive = (lambda: container_alive(client, cid)) if args.follow else None
    try:
        print_log(status.log_path, printer, args.tail, alive)
    except LogError as e:
        print(f"crispy logs: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _quiet_broken_pipe()
    return 0
