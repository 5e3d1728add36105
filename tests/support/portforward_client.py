"""A client-go style port-forward client for tests: the HTTP upgrade, then stream pairs."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from support.spdy_client import SpdyClient

PF_HEADERS = (
    "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"
)


async def request(
    url: str, method: str = "POST", headers: str = PF_HEADERS
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send an upgrade request like client-go; the response head and the open connection."""
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    writer.write(f"{method} {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n{headers}\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    return head, reader, writer


async def spdy(url: str) -> SpdyClient:
    head, reader, writer = await request(url)
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n"), head
    assert "X-Stream-Protocol-Version: portforward.k8s.io\r\n" in head
    assert "Upgrade: SPDY/3.1\r\n" in head
    client = SpdyClient(reader, writer)
    client.task = asyncio.create_task(client.run())
    return client


async def forward(
    client: SpdyClient, port: int, request_id: int, payload: bytes
) -> tuple[bytes, bytes]:
    """One client-go style forward: error stream, then data; (data reply, error text)."""
    base = {"port": str(port), "requestid": str(request_id)}
    err = await client.open({"streamtype": "error", **base})
    await err.close()  # client-go never writes to the error stream
    data = await client.open({"streamtype": "data", **base})
    await data.write(payload, fin=True)
    reply, message = await asyncio.gather(data.read_all(), err.read_all())
    return reply, message
