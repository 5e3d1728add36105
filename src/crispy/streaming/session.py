"""Server side of a SPDY/3.1 session on asyncio streams (after the HTTP ``Upgrade: SPDY/3.1``).

The peer is Go's ``github.com/moby/spdystream`` (kubelet, crictl, kubectl): the client opens
streams with SYN_STREAM (odd ids), the server answers each with SYN_REPLY (:meth:`accept`),
then both sides exchange DATA and half-close with FIN. PINGs from the client are echoed.

Flow control (3.1 section 2.6.8): every stream has a send window (SETTINGS
INITIAL_WINDOW_SIZE, 64 KiB by default) and the session has one more (64 KiB, stream id 0).
As the application reads, the session hands credit back with WINDOW_UPDATE once half a window
has been consumed. Enforcing the *send* windows is optional (``send_flow_control``):
spdystream never sends WINDOW_UPDATE and ignores received ones (its frame handler logs
"unhandled frame type"), so a server that blocks on an exhausted window stalls forever after
64 KiB towards such a client. For the same reason DATA beyond our receive window is accepted
and buffered, never answered with FLOW_CONTROL_ERROR.

All frames go out under one lock: a frame's bytes never interleave with another's, and header
blocks are compressed in wire order (the session's single outbound zlib context).

Closing half-closes and reads on until the peer hangs up (:meth:`SpdySession._linger`): the
kernel answers the close of a socket with unread input with RST and drops what it had not
sent yet, and a peer reading our last frames may be sending right then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Self

from crispy.streaming.spdy import (
    CANCEL,
    FLOW_CONTROL_ERROR,
    GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR,
    INVALID_STREAM,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    SETTINGS_INITIAL_WINDOW_SIZE,
    STREAM_ALREADY_CLOSED,
    DataFrame,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    HeaderInput,
    HeaderMap,
    Headers,
    Ping,
    ProtocolError,
    RstStream,
    Settings,
    SynReply,
    SynStream,
    WindowUpdate,
)

DEFAULT_WINDOW = 64 * 1024
MAX_DATA_FRAME = 16 * 1024
READ_CHUNK = 64 * 1024
# Received DATA buffered for the application across all streams before the session stops
# reading the socket (TCP back-pressure): spdystream ignores our windows, so without this a
# client writing stdin faster than the process reads it would grow crispyd without bound.
MAX_BUFFERED = 16 << 20
# How long a closing session keeps reading (and discarding) while the peer has not hung up.
CLOSE_LINGER = 5.0


class SessionClosed(ConnectionError):
    """The session ended (peer closed, GOAWAY, protocol error, or :meth:`SpdySession.close`)."""


class StreamReset(ConnectionError):
    """The stream was reset (RST_STREAM from the peer, or :meth:`SpdyStream.reset`)."""

    def __init__(self, stream_id: int, status: int, *, by_peer: bool) -> None:
        who = "peer" if by_peer else "local"
        super().__init__(f"stream {stream_id} reset by {who} (status {status})")
        self.stream_id = stream_id
        self.status = status
        self.by_peer = by_peer


class SpdyStream:
    """One bidirectional stream opened by the client; created by :meth:`SpdySession.accept`."""

    def __init__(
        self, session: SpdySession, stream_id: int, headers: HeaderMap, send_window: int
    ) -> None:
        self._session = session
        self.id = stream_id
        self.headers = headers
        self.send_window = send_window
        self._buf = bytearray()
        self._consumed = 0  # read by the application, not yet returned with WINDOW_UPDATE
        self._data = asyncio.Event()
        self.remote_closed = False  # peer sent FIN
        self.local_closed = False  # we sent FIN
        self._error: ConnectionError | None = None

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} local_closed={self.local_closed} eof={self.remote_closed}>"

    async def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` bytes (all buffered bytes if ``n < 0``), waiting for at least one.

        Returns b"" once the peer has half-closed (FIN) and the buffer is drained. Raises
        :class:`StreamReset` after a reset and :class:`SessionClosed` if the session ended
        without a FIN on this stream.
        """
        if n == 0:
            return b""
        while not self._buf:
            if isinstance(self._error, StreamReset):
                raise self._error
            if self.remote_closed:
                return b""
            if self._error is not None:
                raise self._error
            self._data.clear()
            await self._data.wait()
        if isinstance(self._error, StreamReset):
            raise self._error
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        chunk = bytes(self._buf[:take])
        del self._buf[:take]
        self._session._room.set()
        await self._session._consumed(self, take)
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` on an early FIN."""
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as DATA frames, waiting for send window where it is enforced."""
        view = memoryview(data).cast("B")
        while len(view):
            self._check_writable()
            n = await self._session._reserve(self, len(view))
            if n == 0:
                continue
            self._check_writable()
            await self._session._send(DataFrame(self.id, bytes(view[:n])))
            view = view[n:]

    async def close(self) -> None:
        """Half-close: send an empty DATA frame with FIN. Reading continues to work."""
        if self.local_closed or self._error is not None:
            return
        self.local_closed = True
        await self._session._send(DataFrame(self.id, b"", fin=True))
        self._session._maybe_forget(self)

    def reset(self, status: int = CANCEL) -> None:
        """Abort the stream with RST_STREAM(``status``); pending reads/writes raise."""
        if self._error is not None:
            return
        self._fail(StreamReset(self.id, status, by_peer=False))
        self._session._spawn(self._session._send_quietly(RstStream(self.id, status)))
        self._session._forget(self)

    def _check_writable(self) -> None:
        if self._error is not None:
            raise self._error
        if self.local_closed:
            raise BrokenPipeError(f"stream {self.id} is half-closed for writing")

    def _fail(self, error: ConnectionError) -> None:
        if self._error is None:
            self._error = error
        self._data.set()

    def _feed(self, data: bytes, fin: bool) -> None:
        self._buf += data
        if fin:
            self.remote_closed = True
        self._data.set()


class SpdySession:
    """Server end of one SPDY/3.1 connection. Use ``async with`` or :meth:`start`/:meth:`close`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        send_flow_control: bool = False,
        max_data_frame: int = MAX_DATA_FRAME,
        receive_window: int = DEFAULT_WINDOW,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._frames_in = FrameReader()
        self._frames_out = FrameWriter()
        self._write_lock = asyncio.Lock()
        self.send_flow_control = send_flow_control
        self.max_data_frame = max_data_frame
        self.receive_window = receive_window
        self._initial_send_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # session-level (stream 0)
        self._session_consumed = 0
        self._room = asyncio.Event()  # set when the application read (or a stream went)
        self._window_cond = asyncio.Condition()
        self._streams: dict[int, SpdyStream] = {}
        self._pending: asyncio.Queue[SpdyStream] = asyncio.Queue()
        self._last_peer_id = 0
        self._gone_away = False  # no new streams (either side sent GOAWAY)
        self._closed = asyncio.Event()
        self._ended = asyncio.Event()  # the connection is closed (after lingering)
        self.error: BaseException | None = None  # why the session ended, if not cleanly
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="spdy-session")

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self, status: int = GOAWAY_OK) -> None:
        """Send GOAWAY and tear the connection down; streams still open fail.

        Returns once the connection is closed, after lingering for the peer to hang up
        (at most :data:`CLOSE_LINGER` seconds), also when the session was already ending;
        a caller being cancelled (the server stopping) does not linger.
        """
        current = asyncio.current_task()
        if not self._closed.is_set():
            self._gone_away = True
            await self._send_quietly(GoAway(self._last_peer_id, status))
        await self._shutdown()
        if self._task is not current and not _cancelling():
            # A shutdown begun elsewhere (the peer's EOF, a GOAWAY) may still be lingering:
            # the caller's next step, closing the socket, would cut it short.
            await self._ended.wait()
        if self._task is not None and self._task is not current:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def accept(self, headers: HeaderInput | None = None) -> SpdyStream:
        """Wait for the next client stream and answer it with SYN_REPLY(``headers``).

        Raises :class:`SessionClosed` once the session ended or the peer sent GOAWAY and no
        stream is waiting.
        """
        while True:
            if self._pending.empty() and (self._closed.is_set() or self._gone_away):
                raise SessionClosed("SPDY session closed")
            getter = asyncio.ensure_future(self._pending.get())
            closer = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closer.cancel()
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                continue
            stream = getter.result()
            if stream._error is not None:
                continue  # reset before we got to it
            await self._send(SynReply(stream.id, headers or {}))
            return stream

    # --- sending ----------------------------------------------------------------------

    async def _send(self, frame: Frame) -> None:
        if self._closed.is_set():
            raise SessionClosed("SPDY session closed")
        async with self._write_lock:
            # Encode under the lock: header blocks share one zlib context in wire order.
            self._writer.write(self._frames_out.encode(frame))
            await self._writer.drain()

    async def _send_quietly(self, frame: Frame) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._send(frame)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reserve(self, stream: SpdyStream, want: int) -> int:
        """Take send window for up to ``want`` bytes (0 means: re-check the stream)."""
        want = min(want, self.max_data_frame)
        if not self.send_flow_control:
            return want
        async with self._window_cond:
            await self._window_cond.wait_for(
                lambda: (
                    self._closed.is_set()
                    or stream._error is not None
                    or stream.local_closed
                    or (stream.send_window > 0 and self.send_window > 0)
                )
            )
            if self._closed.is_set():
                raise SessionClosed("SPDY session closed")
            if stream._error is not None or stream.local_closed:
                return 0
            n = min(want, stream.send_window, self.send_window)
            stream.send_window -= n
            self.send_window -= n
            return n

    async def _window_changed(self) -> None:
        async with self._window_cond:
            self._window_cond.notify_all()

    def _buffered(self) -> int:
        """DATA received for the live streams and not yet read by the application."""
        return sum(len(stream._buf) for stream in self._streams.values())

    async def _consumed(self, stream: SpdyStream, n: int) -> None:
        """The application read ``n`` bytes: return credit after half a window."""
        threshold = max(1, self.receive_window // 2)
        stream._consumed += n
        self._session_consumed += n
        updates = []
        if stream._consumed >= threshold and not stream.remote_closed:
            updates.append(WindowUpdate(stream.id, min(stream._consumed, MAX_STREAM_ID)))
            stream._consumed = 0
        if self._session_consumed >= threshold:
            updates.append(WindowUpdate(0, min(self._session_consumed, MAX_STREAM_ID)))
            self._session_consumed = 0
        for update in updates:
            await self._send_quietly(update)

    # --- receiving --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                while self._buffered() >= MAX_BUFFERED:
                    self._room.clear()
                    await self._room.wait()
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                self._frames_in.receive(data)
                while (frame := self._frames_in.next_frame()) is not None:
                    await self._dispatch(frame)
                    if self._closed.is_set():
                        return
        except ProtocolError as exc:
            self.error = exc
            self._gone_away = True
            await self._send_quietly(GoAway(self._last_peer_id, GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, OSError) as exc:
            self.error = exc
        finally:
            await self._shutdown()

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):
            await self._on_data(frame)
        elif isinstance(frame, SynStream):
            await self._on_syn_stream(frame)
        elif isinstance(frame, RstStream):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._fail(StreamReset(stream.id, frame.status, by_peer=True))
                self._forget(stream)
                await self._window_changed()
        elif isinstance(frame, WindowUpdate):
            await self._on_window_update(frame)
        elif isinstance(frame, Settings):
            await self._on_settings(frame)
        elif isinstance(frame, Ping):
            if frame.id % 2 == 1:  # client-initiated (odd): echo. Even ids would be our own.
                await self._send_quietly(frame)
        elif isinstance(frame, GoAway):
            self._gone_away = True
            if not self._streams:
                await self._shutdown()
        elif isinstance(frame, SynReply | Headers):
            pass  # we open no streams; HEADERS carry nothing we use

    async def _on_syn_stream(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if self._gone_away:
            await self._send_quietly(RstStream(sid, CANCEL))  # REFUSED would also do
            return
        if sid % 2 == 0 or sid <= self._last_peer_id:
            # Stream ids must be odd and increasing (2.3.2); an id in use is a protocol error.
            await self._send_quietly(RstStream(sid, PROTOCOL_ERROR))
            return
        self._last_peer_id = sid
        headers: HeaderMap = dict(frame.headers)  # type: ignore[arg-type]
        stream = SpdyStream(self, sid, headers, self._initial_send_window)
        if frame.fin:
            stream.remote_closed = True
        if frame.unidirectional:
            stream.local_closed = True
        self._streams[sid] = stream
        self._pending.put_nowait(stream)

    async def _on_data(self, frame: DataFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if frame.stream_id > self._last_peer_id:
                await self._send_quietly(RstStream(frame.stream_id, INVALID_STREAM))
            return  # a stream we already closed or reset: drop late data
        if stream.remote_closed:
            await self._send_quietly(RstStream(stream.id, STREAM_ALREADY_CLOSED))
            stream._fail(StreamReset(stream.id, STREAM_ALREADY_CLOSED, by_peer=False))
            self._forget(stream)
            return
        stream._feed(frame.data, frame.fin)
        if frame.fin:
            self._maybe_forget(stream)

    async def _on_window_update(self, frame: WindowUpdate) -> None:
        if frame.stream_id == 0:
            self.send_window += frame.delta
        else:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return
            stream.send_window += frame.delta
            if stream.send_window > MAX_STREAM_ID:
                await self._send_quietly(RstStream(stream.id, FLOW_CONTROL_ERROR))
                stream._fail(StreamReset(stream.id, FLOW_CONTROL_ERROR, by_peer=False))
                self._forget(stream)
        await self._window_changed()

    async def _on_settings(self, frame: Settings) -> None:
        for entry in frame.entries:
            if entry.id == SETTINGS_INITIAL_WINDOW_SIZE and entry.value <= MAX_STREAM_ID:
                delta = entry.value - self._initial_send_window
                self._initial_send_window = entry.value
                for stream in self._streams.values():
                    stream.send_window += delta  # may go negative (3.1 section 2.6.8)
        await self._window_changed()

    # --- bookkeeping ------------------------------------------------------------------

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: SpdyStream) -> None:
        self._streams.pop(stream.id, None)
        self._room.set()
        if self._gone_away and not self._streams and not self._closed.is_set():
            self._spawn(self._shutdown())

    async def _shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._gone_away = True
        for stream in list(self._streams.values()):
            stream._fail(SessionClosed("SPDY session closed"))
        self._streams.clear()
        async with self._window_cond:
            self._window_cond.notify_all()
        try:
            if not _cancelling():
                await self._linger()
        finally:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._ended.set()

    async def _linger(self) -> None:
        """Half-close, then read and discard until the peer hangs up (or CLOSE_LINGER passed).

        Closing a TCP socket with bytes unread in its receive queue makes Linux send RST
        instead of FIN and drop whatever it has not sent yet: our last DATA, an exec's status
        on the error stream, the FINs and the GOAWAY. The peer is often sending right then:
        WINDOW_UPDATE or PING while it reads our last frames, stdin the process never read.
        So the FIN goes out after our last byte (``write_eof``), the session's reader stops,
        and this reads everything the peer still sends until its EOF. Transports that cannot
        half-close (TLS, which has its own close_notify exchange; a tunnel) just close.
        """
        can_write_eof = getattr(self._writer, "can_write_eof", None)
        if can_write_eof is None or not can_write_eof():
            return
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # one reader at a time: from here on this one discards
            await asyncio.wait({task})
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            self._writer.write_eof()
            async with asyncio.timeout(CLOSE_LINGER):
                while await self._reader.read(READ_CHUNK):
                    pass


def _cancelling() -> bool:
    """Whether the running task is being cancelled (the server stopping): no time to linger."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
