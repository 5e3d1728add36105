"""An asyncio SPDY/3.1 client for port-forward, exec and attach, as client-go speaks it.

Only the framing codec (:mod:`crispy.streaming.spdy`) is shared with the server side. The
client upgrades with client-go's request (POST, ``Upgrade: SPDY/3.1``, one
``X-Stream-Protocol-Version`` header per offered protocol, over http or https), opens streams
with SYN_STREAM (odd ids), waits for the SYN_REPLY and answers the server's PINGs.

There is no flow control, as in moby/spdystream (kubectl's, crictl's and the kubelet
streaming library's SPDY): no WINDOW_UPDATE is sent and the peer's windows are not kept to
(no server enforces them towards a client, since spdystream clients never return credit);
TCP back-pressure does the job. WINDOW_UPDATEs sent to a spdystream server would not only be
useless (it ignores them) but harmful: one still in flight when the server closes the
connection makes the kernel reset it, and the exit status is lost. Receiving, a stream that
buffers more than :data:`MAX_BUFFERED` unread bytes stops the session reading the socket
until it is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import Sequence
from urllib.parse import urlsplit

from crispy.streaming.spdy import (
    DataFrame,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    HeaderInput,
    Ping,
    ProtocolError,
    RstStream,
    SynReply,
    SynStream,
    WindowUpdate,
)

PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
FRAME = 16 * 1024
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024  # of a refusal's body, kept for the error message
BODY_TIMEOUT = 5.0
MAX_BUFFERED = 1 << 20  # unread bytes per stream before the session stops reading


class UpgradeError(Exception):
    """The streaming server did not switch to SPDY/3.1.

    ``status`` is the HTTP status it answered with (None if there was no answer) and ``body``
    the start of its response body (the server's reason, often a metav1.Status).
    """

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SessionClosed(ConnectionError):
    """The SPDY connection is gone."""


class ClientStream:
    """One SPDY stream: buffered reads, writes in DATA frames."""

    def __init__(self, session: SpdySession, stream_id: int) -> None:
        self.session = session
        self.id = stream_id
        self.reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.fin = False
        self.reset_status: int | None = None
        self.changed = asyncio.Event()
        self.drained = asyncio.Event()
        self.closed_local = False

    async def read(self) -> bytes:
        """Some bytes (waiting for them); b"" after FIN; ConnectionResetError on RST."""
        while not self.buf:
            if self.reset_status is not None:
                raise ConnectionResetError(f"stream {self.id} reset: {self.reset_status}")
            if self.fin:
                return b""
            if self.session.closed.is_set():
                raise SessionClosed("SPDY session closed")
            self.changed.clear()
            await self.changed.wait()
        data = bytes(self.buf)
        self.buf.clear()
        self.drained.set()
        return data

    async def read_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
        return bytes(out)

    async def write(self, data: bytes) -> None:
        """Send all of ``data`` in DATA frames (each send waits for the socket to drain)."""
        view = memoryview(data)
        while len(view):
            if self.reset_status is not None:
                raise ConnectionResetError(f"stream {self.id} reset: {self.reset_status}")
            await self.session.send(DataFrame(self.id, bytes(view[:FRAME])))
            view = view[FRAME:]

    async def close(self) -> None:
        """Half-close: FIN on our side (once)."""
        if not self.closed_local:
            self.closed_local = True
            await self.session.send(DataFrame(self.id, b"", fin=True))

    async def reset(self, status: int) -> None:
        await self.session.send(RstStream(self.id, status))


class SpdySession:
    """The client side of one SPDY/3.1 connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.frames_in = FrameReader()
        self.frames_out = FrameWriter()
        self.lock = asyncio.Lock()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.peer_updates = False  # the peer sent a WINDOW_UPDATE (reported by bench.exec)
        self.closed = asyncio.Event()
        self.goaway: GoAway | None = None
        self.error: str = ""
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        protocols: Sequence[str],
        ssl: ssl_module.SSLContext | None = None,
    ) -> tuple[SpdySession, str]:
        """client-go's upgrade request offering ``protocols`` in order, then SPDY.

        Returns the session and the X-Stream-Protocol-Version the server chose ("" when it
        named none: a legacy server). ``ssl`` is used for https URLs (default: verify against
        the system CAs). UpgradeError if the server refuses or picks a protocol not offered.
        """
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UpgradeError(f"unsupported streaming URL: {url}")
        context: ssl_module.SSLContext | None = None
        if u.scheme == "https":
            context = ssl if ssl is not None else ssl_module.create_default_context()
        port = u.port or (443 if context else 80)
        reader, writer = await asyncio.open_connection(
            u.hostname, port, ssl=context, limit=MAX_HEAD
        )
        path = u.path + (f"?{u.query}" if u.query else "")
        offers = "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
        writer.write(
            f"POST {path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: 0\r\n"
            f"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{offers}\r\n".encode()
        )
        try:
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
            writer.close()
            raise UpgradeError(f"no upgrade response from {u.netloc}: {e}") from e
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        parts = lines[0].split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if code != 101:
            body = await _read_body(reader, headers)
            writer.close()
            raise UpgradeError(
                f"streaming server refused the upgrade: {lines[0]}"
                + (f": {body.strip()}" if body.strip() else ""),
                code,
                body,
            )
        protocol = headers.get("x-stream-protocol-version", "")
        if protocol and protocol not in protocols:
            writer.close()
            raise UpgradeError(
                f"streaming server chose protocol {protocol!r}, not one of {list(protocols)}"
            )
        session = cls(reader, writer)
        session.task = asyncio.create_task(session.run())
        return session, protocol

    @classmethod
    async def connect_port_forward(cls, url: str) -> SpdySession:
        """The client-go upgrade request (POST, SPDY/3.1, portforward.k8s.io), then SPDY."""
        session, _ = await cls.connect(url, [PORT_FORWARD_PROTOCOL])
        return session

    async def send(self, frame: Frame) -> None:
        if self.closed.is_set():
            raise SessionClosed("SPDY session closed")
        async with self.lock:
            self.writer.write(self.frames_out.encode(frame))
            await self.writer.drain()

    async def open(self, headers: HeaderInput) -> ClientStream:
        """SYN_STREAM, then wait for the SYN_REPLY (like spdystream CreateStream + Wait)."""
        if self.closed.is_set():
            raise SessionClosed("SPDY session closed")
        stream = ClientStream(self, self.next_id)
        self.next_id += 2
        self.streams[stream.id] = stream
        await self.send(SynStream(stream.id, headers))
        await stream.reply
        return stream

    def forget(self, stream: ClientStream) -> None:
        self.streams.pop(stream.id, None)
        stream.drained.set()

    async def run(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self.frames_in.feed(data):
                    await self.dispatch(frame)
            self.error = "connection closed by the streaming server"
        except ProtocolError as e:
            self.error = f"SPDY protocol error: {e}"
        except (ConnectionError, OSError) as e:
            self.error = f"connection lost: {e}"
        finally:
            if self.goaway is not None and not self.error:
                self.error = "the streaming server ended the session"
            self.closed.set()
            for stream in self.streams.values():
                stream.changed.set()
                if not stream.reply.done():
                    stream.reply.set_exception(SessionClosed("SPDY session closed"))
            self.writer.close()

    async def dispatch(self, frame: Frame) -> None:
        sid = getattr(frame, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(frame, SynReply):
            if stream is not None and not stream.reply.done():
                stream.reply.set_result(None)
        elif isinstance(frame, DataFrame):
            if stream is not None:
                stream.buf += frame.data
                stream.fin = stream.fin or frame.fin
                stream.changed.set()
                if len(stream.buf) > MAX_BUFFERED:
                    # Stop reading the socket until the stream's reader caught up (we give
                    # the peer no window to keep to); a forgotten stream drops its data.
                    stream.drained.clear()
                    if sid in self.streams:
                        await stream.drained.wait()
        elif isinstance(frame, RstStream):
            if stream is not None:
                stream.reset_status = frame.status
                stream.changed.set()
                if not stream.reply.done():
                    stream.reply.set_exception(
                        ConnectionResetError(f"stream {sid} refused: {frame.status}")
                    )
        elif isinstance(frame, WindowUpdate):
            self.peer_updates = True  # credit we have no use for (see the module doc)
        elif isinstance(frame, Ping):
            if frame.id % 2 == 0:  # the server's ping: echo it (ours would be odd)
                await self.send(Ping(frame.id))
        elif isinstance(frame, GoAway):
            self.goaway = frame

    async def close(self) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(GoAway(max(self.next_id - 2, 0)))
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> str:
    """The start of a refusal's body: Content-Length bytes, or up to EOF (bounded, timed)."""
    length = headers.get("content-length", "")
    want = min(int(length), MAX_BODY) if length.isdigit() else MAX_BODY
    data = b""
    with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
        async with asyncio.timeout(BODY_TIMEOUT):
            while len(data) < want and (chunk := await reader.read(want - len(data))):
                data += chunk
    return data.decode("utf-8", "replace")
