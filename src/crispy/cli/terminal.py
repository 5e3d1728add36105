"""Our terminal on a streamed exec or attach: crictl's -i/-t/--transport flags, and
:func:`stream_session`, which pumps our stdio to the runtime's URL (raw mode, resizes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import signal
import ssl
import sys
import termios
import threading
import tty
from collections.abc import Awaitable, Callable, Iterator

from crispy.streaming.remote import TRANSPORTS, RemoteCommand, RemoteError

STDIN_CHUNK = 64 * 1024
STDIN_QUEUE = 4  # chunks read ahead of the connection
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_NOT_FOUND = re.compile(r"executable file not found|no such file or directory", re.IGNORECASE)
_NOT_EXECUTABLE = re.compile(r"permission denied|is a directory", re.IGNORECASE)


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    """crictl's flags of a streamed exec or attach."""
    p.add_argument(
        "-i", "--interactive", action="store_true", help="send our stdin to the container"
    )
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="use a terminal (our terminal goes raw with -i; stderr is merged into stdout)",
    )
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="spdy",
        help="streaming protocol (default spdy)",
    )


class Stopped(Exception):
    """SIGTERM or SIGHUP ended the session."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(code: int, error: str) -> int:
    """Our exit code: the command's, or for a runtime error a shell's guess at one."""
    if not error:
        return code
    if _NOT_FOUND.search(error):
        return 127
    if _NOT_EXECUTABLE.search(error):
        return 126
    return 1


def insecure_tls(url: str) -> ssl.SSLContext | None:
    """An https streaming URL is used without verifying the certificate, as crictl does: it
    came from the runtime over its own socket and carries a single-use token."""
    if not url.startswith("https:"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (keys go to the container), restored however we
    leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int] | None:
    """(columns, rows) of our terminal: stdout's, as crictl takes it, else stdin's."""
    for fd in (1, 0):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return size.columns, size.lines
    return None


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``, even if someone left it non-blocking."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def read_some(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, STDIN_CHUNK)
        except BlockingIOError:
            select.select([fd], [], [])


def stdin_chunks(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes]:
    """Our stdin as a queue of chunks, b"" at EOF, read by a daemon thread.

    A thread rather than the event loop because stdin may be a regular file (which epoll
    refuses), and because making fd 0 non-blocking would change the terminal's file
    description shared with stdout. The queue is bounded: the thread waits for room.
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue(STDIN_QUEUE)

    def work() -> None:
        while True:
            try:
                chunk = read_some(0)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except Exception:
                return  # the loop is gone
            if not chunk:
                return

    threading.Thread(target=work, name="crispy-stdin", daemon=True).start()
    return queue


async def _send_stdin(cmd: RemoteCommand) -> None:
    queue = stdin_chunks(asyncio.get_running_loop())
    with contextlib.suppress(ConnectionError):
        while chunk := await queue.get():
            await cmd.write_stdin(chunk)
        await cmd.close_stdin()


async def _track_size(cmd: RemoteCommand, sent: tuple[int, int] | None) -> None:
    """Send the terminal's size again on every SIGWINCH that changed it."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    try:
        while True:
            await changed.wait()
            changed.clear()
            size = terminal_size()
            if size is not None and size != sent:
                with contextlib.suppress(ConnectionError, OSError):
                    await cmd.resize(*size)
                sent = size
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def _copy_out(read: Callable[[], Awaitable[bytes]], fd: int) -> None:
    while chunk := await read():
        write_all(fd, chunk)


async def _stream(url: str, *, stdin: bool, tty: bool, transport: str) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        main.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    helpers: list[asyncio.Task[None]] = []
    try:
        cmd = await RemoteCommand.connect(
            url,
            stdin=stdin,
            stdout=True,
            stderr=not tty,
            tty=tty,
            transport=transport,
            ssl=insecure_tls(url),
        )
        try:
            size = terminal_size() if tty else None
            if size is not None:
                # before anything else, so the command starts with the right size
                await cmd.resize(*size)
            if tty:
                helpers.append(asyncio.create_task(_track_size(cmd, size)))
            if stdin:
                helpers.append(asyncio.create_task(_send_stdin(cmd)))
            outputs = [_copy_out(cmd.read_stdout, 1)]
            if not tty:
                outputs.append(_copy_out(cmd.read_stderr, 2))
            await asyncio.gather(*outputs)
            return await cmd.wait()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await cmd.close()
    except asyncio.CancelledError:
        if stopped:
            raise Stopped(stopped[0]) from None
        raise
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def stream_session(url: str, *, stdin: bool, tty: bool, transport: str, name: str) -> int:
    """Connect our stdio to an Exec or Attach URL until the session ends; our exit code.

    With a tty and -i on a terminal, the terminal is raw for the session (Ctrl-C goes to the
    container) and restored on every way out. Errors print as `crispy NAME: ...`.
    """
    raw = tty and stdin and os.isatty(0)
    try:
        with raw_terminal(0) if raw else contextlib.nullcontext():
            code, error = asyncio.run(_stream(url, stdin=stdin, tty=tty, transport=transport))
    except RemoteError as e:
        print(f"crispy {name}: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        return 128 + e.signum
    except BrokenPipeError:
        return 128 + signal.SIGPIPE  # our reader went away, as a shell would report it
    if error:
        print(f"crispy {name}: {error}", file=sys.stderr)
    return exit_status(code, error)
