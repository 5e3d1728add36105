"""Exec and attach streams, as kubelet's remotecommand server speaks them.

Two transports carry the same five streams (stdin, stdout, stderr, error, resize):
- SPDY/3.1: the client opens one stream per kind with a ``streamType`` header, the error
  stream first; the server waits until all it expects have arrived (error, those of stdin,
  stdout and stderr that were asked for, and resize with a TTY from v3 on).
- WebSocket: the channel protocols of :mod:`crispy.streaming.channels` (channel 0-4);
  v5 lets the client close stdin with a signal.

The stream protocol version decides how the end is reported on the error stream: v4 and
later (and every WebSocket v4+/v5 protocol) write a ``metav1.Status``; older ones write the
failure message as text and nothing on success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from crispy import errors
from crispy.containers.execs import ContainerExecs
from crispy.containers.stdio import Stdio
from crispy.oci.shim_client import ShimError
from crispy.streaming import channels, status
from crispy.streaming.server import Request, SpdyHandler, WebSocketHandler, spdy_upgrade
from crispy.streaming.session import SessionClosed, SpdySession, SpdyStream, StreamReset
from crispy.streaming.spdy import CANCEL
from crispy.streaming.websocket import HandshakeError, WebSocketConn
from crispy.system.fdio import FdReader

log = logging.getLogger("crispy.streaming")

EXEC = "exec"
ATTACH = "attach"
# kubelet's remotecommand.SupportedStreamingProtocols for SPDY, newest first.
SPDY_PROTOCOLS = (channels.V4_CHANNEL, channels.V3_CHANNEL, channels.V2_CHANNEL, channels.CHANNEL)
STATUS_PROTOCOLS = {
    channels.V4_CHANNEL,
    channels.V5_CHANNEL,
    channels.V4_BASE64_CHANNEL,
    channels.V5_BASE64_CHANNEL,
}
RESIZE_PROTOCOLS = {channels.V3_CHANNEL, channels.V4_CHANNEL}  # SPDY versions with resize
STREAM_CREATION_TIMEOUT = 30.0  # kubelet's default
OUTPUT_LINGER = 2.0  # after the process exited, what it left running may hold its output
STDIN_QUEUE = 16  # WebSocket stdin messages buffered before the reader stops reading

ResizeFn = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Options:
    """What the client asked for; checked once here, so a TTY never comes with stderr."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    def __post_init__(self) -> None:
        if not (self.stdin or self.stdout or self.stderr):
            raise errors.InvalidArgument("one of stdin, stdout, or stderr must be set")
        if self.tty and self.stderr:
            raise errors.InvalidArgument("tty and stderr cannot both be true")


@dataclass(frozen=True)
class ExecTarget:
    container_id: str
    cmd: tuple[str, ...]
    options: Options


@dataclass(frozen=True)
class AttachTarget:
    container_id: str
    options: Options


class Streams:
    """One client's streams, whatever the transport."""

    def __init__(self, protocol: str, options: Options) -> None:
        self.protocol = protocol
        self.options = options
        self.gone = asyncio.Event()  # the client went away

    async def read_stdin(self) -> bytes:
        raise NotImplementedError

    async def write(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    def resizes(self) -> AsyncIterator[tuple[int, int]]:
        raise NotImplementedError

    async def finish(self, message: bytes) -> None:
        """Write the error stream's last word and end the connection."""
        raise NotImplementedError

    def status_success(self) -> bytes:
        return status.success() if self.protocol in STATUS_PROTOCOLS else b""

    def status_exit(self, code: int, cmd: tuple[str, ...]) -> bytes:
        if self.protocol in STATUS_PROTOCOLS:
            return status.exit_code(code, cmd)
        return status.exit_message(code, cmd).encode()

    def status_error(self, message: str) -> bytes:
        if self.protocol in STATUS_PROTOCOLS:
            return status.error(message, reason="InternalError", code=500)
        return message.encode()


# --- SPDY ------------------------------------------------------------------------------------


class SpdyStreams(Streams):
    def __init__(self, session: SpdySession, protocol: str, options: Options) -> None:
        super().__init__(protocol, options)
        self.session = session
        self.streams: dict[str, SpdyStream] = {}
        self.session_watch: asyncio.Task[None] | None = None

    def expected(self) -> set[str]:
        want = {"error"}
        want |= {n for n in ("stdin", "stdout", "stderr") if getattr(self.options, n)}
        if self.options.tty and self.protocol in RESIZE_PROTOCOLS:
            want.add("resize")
        return want

    async def setup(self) -> None:
        """Accept the client's streams until every expected one is there."""
        want = self.expected()
        async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
            while not want <= self.streams.keys():
                stream = await self.session.accept()
                values = stream.headers.get("streamtype") or [""]
                kind = values[0]
                if kind not in want or kind in self.streams:
                    log.debug("remotecommand: unexpected stream %r", kind)
                    stream.reset(CANCEL)
                    continue
                self.streams[kind] = stream
        self.session_watch = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        await self.session.wait_closed()
        self.gone.set()

    async def read_stdin(self) -> bytes:
        stream = self.streams.get("stdin")
        if stream is None:
            return b""
        try:
            return await stream.read(256 * 1024)
        except (SessionClosed, StreamReset):
            return b""

    async def write(self, channel: int, data: bytes) -> None:
        name = "stdout" if channel == channels.STDOUT else "stderr"
        stream = self.streams.get(name)
        if stream is not None:
            await stream.write(data)

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        stream = self.streams.get("resize")
        if stream is None:
            return
        decoder = status.ResizeDecoder()
        while True:
            try:
                chunk = await stream.read()
            except (SessionClosed, StreamReset):
                return
            if not chunk:
                return
            try:
                sizes = decoder.feed(chunk)
            except ValueError as e:
                log.debug("remotecommand: bad resize stream: %s", e)
                return
            for size in sizes:
                yield size

    async def finish(self, message: bytes) -> None:
        with contextlib.suppress(SessionClosed, StreamReset, ConnectionError, OSError):
            error = self.streams.get("error")
            if error is not None:
                if message:
                    await error.write(message)
                await error.close()
            for name in ("stdout", "stderr"):
                if name in self.streams:
                    await self.streams[name].close()
        await self.session.close()
        if self.session_watch is not None:
            self.session_watch.cancel()


# --- WebSocket -------------------------------------------------------------------------------


class WebSocketStreams(Streams):
    def __init__(self, ws: WebSocketConn, options: Options) -> None:
        super().__init__(ws.protocol, options)
        self.ws = ws
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(STDIN_QUEUE)
        self.sizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue(STDIN_QUEUE)
        self.reader = asyncio.create_task(self._read())
        self.stdin_done = False

    async def _read(self) -> None:
        try:
            while (msg := await self.ws.receive()) is not None:
                try:
                    channel, payload = channels.decode(self.protocol, msg)
                except ValueError as e:
                    log.debug("remotecommand: dropping a message: %s", e)
                    continue
                if channel == channels.STDIN and self.options.stdin and not self.stdin_done:
                    if payload is channels.CLOSE:
                        self.stdin_done = True
                        await self.stdin.put(b"")
                    elif payload:
                        assert isinstance(payload, bytes)
                        await self.stdin.put(payload)
                elif channel == channels.RESIZE and self.options.tty and payload:
                    try:
                        assert isinstance(payload, bytes)
                        await self.sizes.put(status.parse_resize(payload))
                    except ValueError as e:
                        log.debug("remotecommand: bad resize: %s", e)
        finally:
            self.gone.set()
            if not self.stdin_done:
                self.stdin_done = True
                with contextlib.suppress(asyncio.QueueFull):
                    self.stdin.put_nowait(b"")
            with contextlib.suppress(asyncio.QueueFull):
                self.sizes.put_nowait(None)

    async def read_stdin(self) -> bytes:
        if not self.options.stdin:
            return b""
        return await self.stdin.get()

    async def write(self, channel: int, data: bytes) -> None:
        await self.ws.send(channels.encode(self.protocol, channel, data))

    async def resizes(self) -> AsyncIterator[tuple[int, int]]:
        while (size := await self.sizes.get()) is not None:
            yield size

    async def finish(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if message:
                await self.ws.send(channels.encode(self.protocol, channels.ERROR, message))
        await self.ws.close()
        self.reader.cancel()


# --- serving ---------------------------------------------------------------------------------


@dataclass
class Session:
    """Copies bytes between a client's streams and a process's (or container's) stdio."""

    streams: Streams
    stdio: Stdio
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, resize: ResizeFn) -> list[asyncio.Task[None]]:
        outputs = []
        if self.stdio.stdin is not None:
            self.tasks.append(asyncio.create_task(self._stdin()))
        for channel, reader in (
            (channels.STDOUT, self.stdio.stdout),
            (channels.STDERR, self.stdio.stderr),
        ):
            if reader is not None and self._wants(channel):
                task = asyncio.create_task(self._output(channel, reader))
                outputs.append(task)
                self.tasks.append(task)
        if self.stdio.tty:
            self.tasks.append(asyncio.create_task(self._resize(resize)))
        return outputs

    def _wants(self, channel: int) -> bool:
        # A terminal's master is read as stdout even when the client asked for no output.
        opts = self.streams.options
        return opts.stdout if channel == channels.STDOUT else opts.stderr

    async def _stdin(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.streams.read_stdin():
                assert self.stdio.stdin is not None
                await self.stdio.stdin.write(data)
        await self.stdio.close_stdin()

    async def _output(self, channel: int, reader: FdReader) -> None:
        with contextlib.suppress(ConnectionError, OSError, SessionClosed, StreamReset):
            while data := await reader.read():
                await self.streams.write(channel, data)

    async def _resize(self, resize: ResizeFn) -> None:
        async for width, height in self.streams.resizes():
            await resize(width, height)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.stdio.close()


async def _drain(outputs: list[asyncio.Task[None]], timeout: float | None) -> None:
    if outputs:
        await asyncio.wait(outputs, timeout=timeout)


async def run_exec(manager: ContainerExecs, target: ExecTarget, streams: Streams) -> None:
    opts = target.options
    try:
        proc = await manager.exec_stream(
            target.container_id,
            list(target.cmd),
            tty=opts.tty,
            stdin=opts.stdin,
            stdout=opts.stdout,
            stderr=opts.stderr,
        )
    except (errors.CrispyError, ShimError, OSError) as e:
        await streams.finish(streams.status_error(str(e)))
        return

    async def resize(width: int, height: int) -> None:
        proc.resize(width, height)

    session = Session(streams, proc)
    outputs = session.start(resize)
    exit_task = asyncio.create_task(proc.wait())
    gone = asyncio.create_task(streams.gone.wait())
    try:
        await asyncio.wait({exit_task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not exit_task.done():  # nobody is left to tell: the process goes too
            await proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(exit_task), 5)
            return
        record = exit_task.result()
        await _drain(outputs, OUTPUT_LINGER)
        code = int(record.get("exit_code", 0))
        if code == 0:
            message = streams.status_success()
        elif 0 < code <= 255:
            message = streams.status_exit(code, target.cmd)
        else:
            message = streams.status_error(f"command exited with status {code}")
        await streams.finish(message)
    except ShimError as e:
        await streams.finish(streams.status_error(f"exec in {target.container_id}: {e}"))
    finally:
        gone.cancel()
        if not exit_task.done():
            exit_task.cancel()
        await session.stop()


async def run_attach(manager: ContainerExecs, target: AttachTarget, streams: Streams) -> None:
    opts = target.options
    try:
        att = await manager.attach(
            target.container_id, stdin=opts.stdin, stdout=opts.stdout, stderr=opts.stderr
        )
    except (errors.CrispyError, ShimError, OSError) as e:
        await streams.finish(streams.status_error(str(e)))
        return
    session = Session(streams, att)
    outputs = session.start(att.resize)
    waits: set[asyncio.Task[object]] = {asyncio.create_task(streams.gone.wait())}
    if outputs:
        waits.add(asyncio.create_task(_drain(outputs, None)))
    else:
        waits.add(asyncio.create_task(att.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not streams.gone.is_set():
            await streams.finish(streams.status_success())
    finally:
        for task in waits:
            task.cancel()
        await session.stop()


# --- handlers for the streaming server -------------------------------------------------------


def spdy_handler(manager: ContainerExecs, kind: str) -> SpdyHandler:
    async def serve(
        target: ExecTarget | AttachTarget,
        protocol: str,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        session = await spdy_upgrade(protocol, reader, writer)
        session.start()
        streams = SpdyStreams(session, protocol or channels.CHANNEL, target.options)
        try:
            await streams.setup()
        except (TimeoutError, SessionClosed) as e:
            log.info("%s: the client did not open its streams: %s", kind, e or "timed out")
            await session.close()
            return
        await _run(manager, target, streams)

    return serve


def websocket_handler(manager: ContainerExecs, kind: str) -> WebSocketHandler:
    async def serve(
        target: ExecTarget | AttachTarget,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            ws = await WebSocketConn.accept(request, reader, writer, channels.EXEC_PROTOCOLS)
        except HandshakeError as e:
            log.info("%s: WebSocket handshake refused: %s", kind, e)
            return
        await _run(manager, target, WebSocketStreams(ws, target.options))

    return serve


async def _run(
    manager: ContainerExecs, target: ExecTarget | AttachTarget, streams: Streams
) -> None:
    if isinstance(target, ExecTarget):
        await run_exec(manager, target, streams)
    else:
        await run_attach(manager, target, streams)
