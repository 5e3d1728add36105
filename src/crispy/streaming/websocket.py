"""Server side of an RFC 6455 WebSocket on asyncio streams, framing by ``wsproto``.

The streaming server has already read the HTTP request head (``Request.raw``); :meth:`accept`
replays it into wsproto, negotiates ``Sec-WebSocket-Protocol`` the Kubernetes way (the first
protocol the *client* offered that we support) and answers 101. A background task then reads
the socket, answers pings and close frames, and queues whole messages for :meth:`receive`.

Back-pressure both ways: :meth:`send` awaits ``drain()``, and the reader stops reading the
socket while more than :data:`QUEUE_HIGH` bytes of received messages wait to be taken.
No extensions (permessage-deflate) are negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Self

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from crispy.streaming import channels
from crispy.streaming.server import Request, response

log = logging.getLogger("crispy.streaming")

READ_CHUNK = 256 * 1024
QUEUE_HIGH = 1 << 20  # received bytes waiting for receive() before we stop reading
CLOSE_TIMEOUT = 2.0  # how long close() waits for the peer's Close


class HandshakeError(Exception):
    """The WebSocket upgrade was refused; the HTTP error response has been written."""


class WebSocketConn:
    """One accepted WebSocket connection (server side). Create with :meth:`accept`."""

    def __init__(
        self,
        ws: WSConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str,
        max_message: int,
    ) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self.protocol = protocol
        self.max_message = max_message
        self.close_code: int | None = None  # the peer's close code, once known
        self._send_lock = asyncio.Lock()
        self._messages: deque[bytes | str] = deque()
        self._queued = 0
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._eof = False  # the reader is done: no more messages will be queued
        self._closing = False  # close() was called or the connection ended: no more sends
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def accept(
        cls,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocols: Sequence[str],
        *,
        max_message: int = 16 << 20,
    ) -> Self:
        """Complete the handshake of ``request`` and start reading.

        Writes 400 for an invalid handshake and 403 when no offered sub-protocol is in
        ``protocols`` (an empty offer counts as ""), then raises :class:`HandshakeError`.
        A received message longer than ``max_message`` bytes (characters for text) closes the
        connection with 1009.
        """
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(request.raw)
            events = list(ws.events())
        except RemoteProtocolError as e:
            await _refuse(writer, 400, "Bad Request", f"bad WebSocket handshake: {e}")
            raise HandshakeError(str(e)) from None
        if len(events) != 1 or not isinstance(events[0], WsRequest):
            await _refuse(writer, 400, "Bad Request", "bad WebSocket handshake")
            raise HandshakeError("bad WebSocket handshake")
        offered = events[0].subprotocols
        chosen = channels.negotiate(offered, protocols)
        if chosen is None:
            message = (
                "unable to upgrade: unable to negotiate protocol: "
                f"client supports {list(offered)}, server supports {list(protocols)}"
            )
            await _refuse(writer, 403, "Forbidden", message)
            raise HandshakeError(message)
        writer.write(ws.send(AcceptConnection(subprotocol=chosen or None)))
        await writer.drain()
        conn = cls(ws, reader, writer, chosen, max_message)
        conn._task = asyncio.create_task(conn._run(), name="websocket-reader")
        return conn

    @property
    def closed(self) -> bool:
        """True once closing started (locally or by the peer) or the connection was lost."""
        return self._closing

    async def receive(self) -> bytes | str | None:
        """The next whole message (bytes for binary, str for text); None after the end."""
        while not self._messages:
            if self._eof:
                return None
            self._readable.clear()
            await self._readable.wait()
        message = self._messages.popleft()
        self._queued -= len(message)
        if self._queued <= QUEUE_HIGH:
            self._space.set()
        return message

    async def send(self, data: bytes | str) -> None:
        """Send one message: binary for bytes, text for str. ConnectionError once closed."""
        event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        async with self._send_lock:
            if self._closing or self._ws.state is not ConnectionState.OPEN:
                raise ConnectionError("WebSocket is closed")
            self._writer.write(self._ws.send(event))
            await self._writer.drain()

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send Close, wait up to :data:`CLOSE_TIMEOUT` s for the peer's, drop the transport."""
        self._closing = True
        self._space.set()  # a reader blocked on a full queue must go on to see the Close
        if self._ws.state is ConnectionState.OPEN:  # not yet closing, nor closed by the peer
            with contextlib.suppress(ConnectionError, OSError, LocalProtocolError):
                self._write_control(CloseConnection(code=code, reason=reason or None))
                await self._writer.drain()
        if self._task is not None and self._task is not asyncio.current_task():
            _, pending = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_transport()

    # --- internals ----------------------------------------------------------------------

    def _write_control(self, event: Event) -> None:
        # Written at once, not under the send lock: one write() is one whole frame, so it
        # cannot interleave with a data frame, and a pong must not wait behind a slow send.
        self._writer.write(self._ws.send(event))

    async def _drop_transport(self) -> None:
        self._closing = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _queue(self, message: bytes | str) -> None:
        self._messages.append(message)
        self._queued += len(message)
        self._readable.set()

    async def _run(self) -> None:
        binary: list[bytes | bytearray] = []  # fragments of the message being received
        text: list[str] = []
        size = 0
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                # None tells wsproto the transport is gone (a 1006 CloseConnection event).
                self._ws.receive_data(data or None)
                for event in self._ws.events():
                    if isinstance(event, BytesMessage | TextMessage):
                        if self._closing:
                            continue  # we sent Close: the rest is of no use to anyone
                        size += len(event.data)
                        if size > self.max_message:
                            log.info("websocket: message over %d bytes", self.max_message)
                            binary, text, size = [], [], 0
                            self._closing = True
                            self._write_control(
                                CloseConnection(CloseReason.MESSAGE_TOO_BIG, "message too big")
                            )
                            continue
                        if isinstance(event, TextMessage):
                            text.append(event.data)
                        else:
                            binary.append(event.data)
                        if event.message_finished:
                            # join() of a single part returns it without a copy
                            self._queue("".join(text) if text else b"".join(binary))
                            binary, text, size = [], [], 0
                    elif isinstance(event, Ping):
                        if self._ws.state is ConnectionState.OPEN:
                            self._write_control(event.response())
                    elif isinstance(event, CloseConnection):
                        await self._on_close(event)
                        return
                while self._queued > QUEUE_HIGH and not self._closing:
                    self._space.clear()
                    await self._space.wait()
        except (ConnectionError, OSError) as e:
            log.debug("websocket: connection lost: %s", e)
        except Exception:
            log.exception("websocket: reader failed")
        finally:
            self._closing = True
            self._eof = True
            self._readable.set()
            await self._drop_transport()

    async def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer started the close: echo it
            self.close_code = event.code
            self._closing = True
            with contextlib.suppress(ConnectionError, OSError):
                self._write_control(event.response())
                await self._writer.drain()
        elif state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a CloseConnection without changing
            # state: fail the connection with that code (RFC 6455 7.1.7).
            log.debug("websocket: protocol error: %s", event.reason)
            self._closing = True
            with contextlib.suppress(ConnectionError, OSError):
                self._write_control(CloseConnection(event.code, event.reason))
                await self._writer.drain()
        else:  # CLOSED: the answer to our Close, or the transport was lost (1006)
            if self.close_code is None:
                self.close_code = event.code


async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str, body: str) -> None:
    log.debug("websocket: refused upgrade: %d %s", status, body)
    writer.write(response(status, reason, body=body + "\n"))
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
