"""A minimal SPDY/3.1 client for tests, behaving like moby/spdystream's client side.

Deliberately independent of crispy.streaming.session (only the framing codec is shared): it
opens streams with SYN_STREAM (odd ids 1, 3, 5, ...), waits for SYN_REPLY, sends PINGs with
odd ids, and, unlike spdystream, does flow control of its own: it never sends more than the
server's windows allow and returns credit with WINDOW_UPDATE after half a window was read.
Every received frame is also appended to ``frames`` for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from crispy.streaming.spdy import (
    DataFrame,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    HeaderInput,
    HeaderMap,
    Ping,
    ProtocolError,
    RstStream,
    SynReply,
    SynStream,
    WindowUpdate,
)

WINDOW = 64 * 1024
FRAME = 16 * 1024


class ClientStream:
    def __init__(self, client: SpdyClient, stream_id: int) -> None:
        self.client = client
        self.id = stream_id
        self.reply: asyncio.Future[HeaderMap] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.fin = False
        self.reset_status: int | None = None
        self.changed = asyncio.Event()
        self.send_window = WINDOW
        self.unacked = 0

    async def read(self) -> bytes:
        """Buffered bytes (waiting for some); b"" after FIN; ConnectionResetError on RST."""
        while not self.buf:
            if self.reset_status is not None:
                raise ConnectionResetError(f"stream {self.id} reset: {self.reset_status}")
            if self.fin or self.client.closed.is_set():
                return b""
            self.changed.clear()
            await self.changed.wait()
        data = bytes(self.buf)
        self.buf.clear()
        self.unacked += len(data)
        self.client.session_unacked += len(data)
        if self.unacked >= WINDOW // 2 and not self.fin:
            await self._window_update(self.id, self.unacked)
            self.unacked = 0
        if self.client.session_unacked >= WINDOW // 2:
            await self._window_update(0, self.client.session_unacked)
            self.client.session_unacked = 0
        return data

    async def _window_update(self, stream_id: int, delta: int) -> None:
        # It only lets the peer send more: moot once the peer has closed the connection
        # (crispyd does, right after an exec's last bytes and status), so never an error.
        if self.client.closed.is_set():
            return
        with contextlib.suppress(ConnectionError):
            await self.client.send(WindowUpdate(stream_id, delta))

    async def read_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
        return bytes(out)

    async def write(self, data: bytes, *, fin: bool = False) -> None:
        client = self.client
        view = memoryview(data)
        while len(view):
            async with client.window_cond:
                await client.window_cond.wait_for(
                    lambda: self.send_window > 0 and client.send_window > 0
                )
                n = min(len(view), FRAME, self.send_window, client.send_window)
                self.send_window -= n
                client.send_window -= n
            await client.send(DataFrame(self.id, bytes(view[:n])))
            view = view[n:]
        if fin:
            await self.close()

    async def close(self) -> None:
        await self.client.send(DataFrame(self.id, b"", fin=True))

    async def reset(self, status: int) -> None:
        await self.client.send(RstStream(self.id, status))


class SpdyClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames_in = FrameReader()
        self.frames_out = FrameWriter()
        self.lock = asyncio.Lock()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.next_ping = 1
        self.pongs: dict[int, asyncio.Future[None]] = {}
        self.frames: list[Frame] = []
        self.send_window = WINDOW
        self.session_unacked = 0
        self.window_cond = asyncio.Condition()
        self.closed = asyncio.Event()
        self.goaway: GoAway | None = None
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int) -> SpdyClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        client.task = asyncio.create_task(client.run())
        return client

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            self.writer.write(self.frames_out.encode(frame))
            await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        async with self.lock:
            self.writer.write(data)
            await self.writer.drain()

    async def open(self, headers: HeaderInput, *, fin: bool = False) -> ClientStream:
        """SYN_STREAM, then wait for the SYN_REPLY (like spdystream CreateStream + Wait)."""
        stream = ClientStream(self, self.next_id)
        self.next_id += 2
        self.streams[stream.id] = stream
        await self.send(SynStream(stream.id, headers, fin=fin))
        await stream.reply
        return stream

    async def ping(self) -> None:
        pid = self.next_ping
        self.next_ping += 2
        self.pongs[pid] = asyncio.get_running_loop().create_future()
        await self.send(Ping(pid))
        await self.pongs[pid]

    async def run(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self.frames_in.feed(data):
                    self.frames.append(frame)
                    await self.dispatch(frame)
        except (ConnectionError, ProtocolError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.changed.set()
                if not stream.reply.done():
                    stream.reply.set_exception(ConnectionError("session closed"))

    async def dispatch(self, frame: Frame) -> None:
        sid = getattr(frame, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(frame, SynReply) and stream is not None:
            stream.reply.set_result(dict(frame.headers))  # type: ignore[arg-type]
        elif isinstance(frame, DataFrame) and stream is not None:
            stream.buf += frame.data
            stream.fin = stream.fin or frame.fin
            stream.changed.set()
        elif isinstance(frame, RstStream) and stream is not None:
            stream.reset_status = frame.status
            stream.changed.set()
            if not stream.reply.done():
                stream.reply.set_exception(ConnectionResetError(frame.status))
        elif isinstance(frame, WindowUpdate):
            async with self.window_cond:
                if frame.stream_id == 0:
                    self.send_window += frame.delta
                elif stream is not None:
                    stream.send_window += frame.delta
                self.window_cond.notify_all()
        elif isinstance(frame, Ping):
            pong = self.pongs.pop(frame.id, None)
            if pong is not None:
                pong.set_result(None)
        elif isinstance(frame, GoAway):
            self.goaway = frame

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        if self.task is not None:
            await asyncio.wait_for(self.task, 2)

    async def __aenter__(self) -> SpdyClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
