"""WebSocket test clients, independent of crispy's server code.

* :class:`WsClient`: aiohttp's client (``ClientSession.ws_connect``) with helpers for the
  Kubernetes channel protocols (codecs from ``crispy.streaming.channels``);
* :class:`RawWsClient`: a hand-rolled RFC 6455 client on a plain TCP connection, for what
  aiohttp will not send: fragmented messages, malformed frames;
* :func:`spdy_tunnel`: client-go's SPDY-in-WebSocket tunnel (``SPDY/3.1+portforward.k8s.io``)
  as a :class:`support.spdy_client.SpdyClient`: every SPDY frame goes out as one binary
  message, received messages are concatenated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from crispy.streaming import channels
from support.spdy_client import SpdyClient

MAX_MESSAGE = 256 << 20
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, protocols: Sequence[str] = (), **kwargs: Any) -> WsClient:
        """Connect; aiohttp.WSServerHandshakeError (with ``.status``) if refused."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                url, protocols=tuple(protocols), max_msg_size=MAX_MESSAGE, **kwargs
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    @property
    def protocol(self) -> str:
        return self.ws.protocol or ""

    async def receive(self, timeout: float = 10) -> bytes | str | None:
        """The next data message; None once the connection closed."""
        msg = await self.ws.receive(timeout)
        if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            return cast(bytes | str, msg.data)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            return None
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise ConnectionError(f"websocket error: {msg.data}")
        raise AssertionError(f"unexpected message {msg}")

    # --- channel protocols ---------------------------------------------------------------

    async def send_channel(self, channel: int, data: bytes, *, count: int) -> None:
        message = channels.encode(self.protocol, channel, data, channels=count)
        if isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_bytes(message)

    async def receive_channel(self, *, count: int, timeout: float = 10) -> tuple[int, bytes] | None:
        message = await self.receive(timeout)
        if message is None:
            return None
        if isinstance(message, str) == channels.protocol(self.protocol).binary:
            raise AssertionError(f"wrong frame type for {self.protocol!r}: {message!r}")
        channel, payload = channels.decode(self.protocol, message, channels=count)
        assert isinstance(payload, bytes)
        return channel, payload

    async def collect(self, *, count: int, timeout: float = 10) -> dict[int, bytes]:
        """Everything received per channel until the server closes the connection."""
        out: dict[int, bytes] = {c: b"" for c in range(count)}
        async with asyncio.timeout(timeout):
            while (got := await self.receive_channel(count=count)) is not None:
                out[got[0]] += got[1]
        return out

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def with_ports(url: str, *ports: int | str) -> str:
    """``url`` with one ``port`` query parameter per argument (a str may hold "80,443")."""
    return url + "?" + "&".join(f"port={p}" for p in ports)


async def portforward_channels(
    url: str, ports: Sequence[int], protocol: str = channels.V4_CHANNEL
) -> tuple[WsClient, int]:
    """Connect for port-forward with ``protocol`` ("" offers nothing), check the port prefixes
    on both channels of every port; the client and the channel count."""
    client = await WsClient.connect(
        with_ports(url, ",".join(map(str, ports))), [protocol] if protocol else []
    )
    assert client.protocol == protocol, client.protocol
    count = 2 * len(ports)
    seen: dict[int, bytes] = {}
    while len(seen) < count:
        got = await client.receive_channel(count=count)
        assert got is not None, f"closed before the port prefixes ({seen})"
        channel, payload = got
        assert channel not in seen, f"second message on {channel} before all prefixes"
        seen[channel] = payload
    for i, port in enumerate(ports):
        prefix = struct.pack("<H", port)
        assert seen[2 * i] == prefix and seen[2 * i + 1] == prefix, (port, seen)
    return client, count


# --- raw frames -----------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + masked


class RawWsClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.head = ""

    @classmethod
    async def connect(
        cls, url: str, protocols: Sequence[str] = (), *, headers: str | None = None
    ) -> RawWsClient:
        """Send the upgrade request (``headers`` replaces the WebSocket headers) and read
        the response head into ``head``; it does not check that it is a 101."""
        u = urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        client = cls(reader, writer)
        key = base64.b64encode(os.urandom(16))
        if headers is None:
            headers = (
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\n"
            )
            if protocols:
                headers += f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n"
        target = u.path + (f"?{u.query}" if u.query else "")
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\n{headers}\r\n".encode())
        await writer.drain()
        client.head = (await reader.readuntil(b"\r\n\r\n")).decode()
        if client.head.startswith("HTTP/1.1 101 "):
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            assert f"sec-websocket-accept: {accept}\r\n".lower() in client.head.lower()
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next server frame (servers never mask)."""
        b0, b1 = await self.reader.readexactly(2)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# --- the SPDY tunnel ------------------------------------------------------------------


class _TunnelReader:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def read(self, n: int = -1) -> bytes:
        msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            return cast(bytes, msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return b""
        raise ConnectionError(f"unexpected message in the SPDY tunnel: {msg}")


class _TunnelWriter:
    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data

    async def drain(self) -> None:
        data, self.buf = bytes(self.buf), bytearray()
        if data:
            await self.client.ws.send_bytes(data)

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        await self.client.close()


async def spdy_tunnel(url: str) -> SpdyClient:
    """A SPDY client tunnelled through a WebSocket offering only the tunnel protocol."""
    client = await WsClient.connect(url, [channels.SPDY_TUNNEL_PORTFORWARD])
    assert client.protocol == channels.SPDY_TUNNEL_PORTFORWARD, client.protocol
    spdy = SpdyClient(
        cast(asyncio.StreamReader, _TunnelReader(client.ws)),
        cast(asyncio.StreamWriter, _TunnelWriter(client)),
    )
    spdy.task = asyncio.create_task(spdy.run())
    return spdy
