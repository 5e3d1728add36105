"""Port-forward over WebSocket (``Upgrade: websocket`` on ``/portforward/<token>``).

Two families of ``Sec-WebSocket-Protocol``:

* the wsstream channel protocols ``v4.channel.k8s.io`` (binary), ``v4.base64.channel.k8s.io``
  (base64 text) and none at all (binary), as kubelet's
  ``pkg/kubelet/cri/streaming/portforward/websocket.go``: the ports come from the ``port``
  query parameter (repeatable, comma separated), port *i* owns data channel 2i and error
  channel 2i+1, and the server first writes the port as uint16 little-endian on both. One TCP
  connection per port is dialed; a failed dial is reported as text on the error channel. Like
  kubelet (which closes the connection once every port's forward returned), the session ends
  when the client closes the WebSocket or when every port is done (pod closed or dial failed).
* ``SPDY/3.1+portforward.k8s.io``: client-go's ``TunnelingConnection``: the raw bytes of a
  SPDY/3.1 session carried in binary messages, no prefix and no framing of their own (one
  write is one message; a reader concatenates messages). The WebSocket handshake replaces the
  SPDY upgrade, so no ``101 ... Upgrade: SPDY/3.1`` is written; the stream pairs are then served
  exactly as over plain SPDY (:func:`crispy.streaming.portforward.run_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import cast
from urllib.parse import parse_qs, urlsplit

from crispy.streaming import channels, portforward
from crispy.streaming.dial import dial_in_netns
from crispy.streaming.portforward import PortForwardTarget
from crispy.streaming.server import Request, response
from crispy.streaming.session import SpdySession
from crispy.streaming.websocket import HandshakeError, WebSocketConn

log = logging.getLogger("crispy.streaming")

KIND = portforward.KIND
PROTOCOLS: tuple[str, ...] = (*channels.PORTFORWARD_PROTOCOLS, channels.SPDY_TUNNEL_PORTFORWARD)
# 2 channels per port; base64 framing names channel c with chr(ord("0") + c) <= chr(255).
MAX_PORTS = 100
COPY_CHUNK = 64 * 1024
PENDING_CHUNKS = 16  # client messages queued per port (while dialing, or a slow pod)


async def serve(
    target: PortForwardTarget,
    request: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """The streaming server's WebSocket handler for ``/portforward/<token>``."""
    # The ports must be checked before the upgrade (kubelet answers 400), but only the
    # channel protocols use them: negotiate here once to know which family this is.
    offered = request.values("sec-websocket-protocol")
    ports: list[int] = []
    if channels.negotiate(offered, PROTOCOLS) != channels.SPDY_TUNNEL_PORTFORWARD:
        try:
            ports = parse_ports(request.path)
        except ValueError as e:
            writer.write(response(400, "Bad Request", body=f"{e}\n"))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            return
    try:
        conn = await WebSocketConn.accept(request, reader, writer, PROTOCOLS)
    except HandshakeError:
        return
    try:
        if conn.protocol == channels.SPDY_TUNNEL_PORTFORWARD:
            session = SpdySession(
                cast(asyncio.StreamReader, _TunnelReader(conn)),
                cast(asyncio.StreamWriter, _TunnelWriter(conn)),
            )
            await portforward.run_session(target, session)
        else:
            await _serve_channels(target, conn, ports)
    finally:
        await conn.close()


def parse_ports(path: str) -> list[int]:
    """The ``port`` query parameters of ``path`` (kubelet's NewV4Options); ValueError."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("port", [])
    if not values:
        raise ValueError('query parameter "port" is required')
    ports = []
    for value in values:
        if not value:
            raise ValueError('query parameter "port" cannot be empty')
        for part in value.split(","):
            if not re.fullmatch(r"[0-9]{1,5}", part) or not 0 < int(part) <= 65535:
                raise ValueError(f"unable to parse {value!r} as a port")
            ports.append(int(part))
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports per connection")
    return ports


# --- wsstream channels ----------------------------------------------------------------


class _Port:
    def __init__(self, port: int, data: int, error: int) -> None:
        self.port = port
        self.data = data
        self.error = error
        self.pending: asyncio.Queue[bytes] = asyncio.Queue(PENDING_CHUNKS)
        self.done = False


class _Channels:
    def __init__(self, target: PortForwardTarget, conn: WebSocketConn, ports: list[int]) -> None:
        self.target = target
        self.conn = conn
        self.count = 2 * len(ports)
        self.ports = [_Port(*p) for p in channels.portforward_channels(ports)]

    async def send(self, channel: int, data: bytes) -> None:
        await self.conn.send(
            channels.encode(self.conn.protocol, channel, data, channels=self.count)
        )

    async def route(self) -> None:
        """Client messages to their port's queue until the client closes."""
        by_channel = {p.data: p for p in self.ports}
        while (message := await self.conn.receive()) is not None:
            try:
                channel, payload = channels.decode(self.conn.protocol, message, channels=self.count)
            except ValueError as e:
                log.debug("port-forward: ignoring a bad WebSocket message: %s", e)
                continue  # wsstream skips what it cannot decode, too
            port = by_channel.get(channel)  # data on an error channel is ignored, like wsstream
            if port is not None and not port.done and isinstance(payload, bytes) and payload:
                await port.pending.put(payload)

    async def forward(self, port: _Port) -> None:
        try:
            try:
                r, w = await dial_in_netns(self.target.netns, port.port)
            except (OSError, ValueError) as e:
                message = portforward.dial_error(self.target, port.port, e)
                log.info("port-forward: %s", message)
                await self.send(port.error, message.encode())
                return
            try:
                await self._copy(port, r, w)
            finally:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
        except (ConnectionError, OSError) as e:
            log.debug("port-forward to %s:%d ended: %s", self.target.pod_id, port.port, e)
        finally:
            port.done = True
            while not port.pending.empty():  # also wakes route() if it waits to put
                port.pending.get_nowait()

    async def _copy(
        self, port: _Port, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Both ways until the pod closes (v4 channels cannot carry a client half-close)."""

        async def upstream() -> None:
            while True:
                writer.write(await port.pending.get())
                await writer.drain()

        async def downstream() -> None:
            while chunk := await reader.read(COPY_CHUNK):
                await self.send(port.data, chunk)

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _serve_channels(target: PortForwardTarget, conn: WebSocketConn, ports: list[int]) -> None:
    session = _Channels(target, conn, ports)
    for port in session.ports:
        prefix = channels.port_prefix(port.port)
        await session.send(port.data, prefix)
        await session.send(port.error, prefix)
    forwards = [asyncio.create_task(session.forward(p)) for p in session.ports]
    router = asyncio.create_task(session.route())
    pending: set[asyncio.Task[None]] = {router, *forwards}
    try:
        # until the client closes, or (as kubelet) every port's forward has returned
        while router in pending and pending != {router}:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


# --- SPDY tunnelled in WebSocket --------------------------------------------------------


class _TunnelReader:
    """What SpdySession reads (``read(n)``): the concatenated binary messages."""

    def __init__(self, conn: WebSocketConn) -> None:
        self._conn = conn
        self._message = b""
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._message):
            message = await self._conn.receive()
            if message is None:
                return b""
            if isinstance(message, str):
                # client-go's TunnelingConnection fails the same way
                raise ConnectionError("text message in a SPDY tunnel")
            self._message, self._pos = message, 0
        if self._pos == 0 and (n < 0 or len(self._message) <= n):
            chunk = self._message  # the common case: a whole message, no copy
        else:
            end = len(self._message) if n < 0 else self._pos + n
            chunk = self._message[self._pos : end]
        self._pos += len(chunk)
        return chunk


class _TunnelWriter:
    """What SpdySession writes to (write/drain/close/wait_closed): each frame it writes and
    drains goes out as one binary message, as client-go's TunnelingConnection.Write does."""

    def __init__(self, conn: WebSocketConn) -> None:
        self._conn = conn
        self._pending: list[bytes] = []
        self._closer: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            await self._conn.send(data)

    def close(self) -> None:
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._conn.close())

    async def wait_closed(self) -> None:
        if self._closer is not None:
            await asyncio.shield(self._closer)
