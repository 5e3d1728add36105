"""The streaming server and port-forward handler in-process, over TCP loopback only.

The pod side is a listener on 127.0.0.1 reached through a host-network target (netns "").
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from crispy.streaming import portforward
from crispy.streaming.server import BadRequest, StreamingServer, parse_request
from support.portforward_client import forward, request, spdy


def run(test: Callable[[], Awaitable[None]], timeout: float = 10) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def setup() -> AsyncIterator[tuple[StreamingServer, int]]:
    """A streaming server and an echo-ish 'pod' listener answering 'hello <request>'."""

    async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the forwarded FIN
        writer.write(b"hello " + data)
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(pod, "127.0.0.1", 0)
    server = StreamingServer("127.0.0.1", 0)
    server.handle(portforward.KIND, [portforward.PROTOCOL], portforward.serve)
    await server.start()
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        await server.stop()
        listener.close()


def url(server: StreamingServer) -> str:
    token = server.register(portforward.KIND, portforward.PortForwardTarget("pod1", ""))
    return server.url(portforward.KIND, token)


def test_forward_concurrent_requests_and_closed_port() -> None:
    async def test() -> None:
        async with setup() as (server, port):
            assert server.port != 0
            async with await spdy(url(server)) as client:
                got = await asyncio.gather(
                    *(forward(client, port, i, f"req{i}".encode()) for i in range(3))
                )
                assert got == [(f"hello req{i}".encode(), b"") for i in range(3)]
                # a port nothing listens on: reported on the error stream
                with socketless_port() as closed:
                    reply, message = await forward(client, closed, 7, b"x")
                assert reply == b""
                assert message.decode().startswith(
                    f"error forwarding port {closed} to pod pod1, uid : "
                ), message
                assert "refused" in message.decode()

    run(test)


@contextlib.contextmanager
def socketless_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_large_transfer_both_ways() -> None:
    async def test() -> None:
        async with setup() as (server, port), await spdy(url(server)) as client:
            payload = bytes(range(256)) * 4096  # 1 MiB
            reply, message = await forward(client, port, 0, payload)
            assert message == b"" and reply == b"hello " + payload

    run(test, 20)


def test_token_single_use_unknown_and_bad_requests() -> None:
    async def test() -> None:
        async with setup() as (server, _):
            u = url(server)
            client = await spdy(u)
            await client.close()
            head, _, w = await request(u)
            assert head.startswith("HTTP/1.1 404 "), head
            w.close()
            head, _, w = await request(server.url("portforward", "nope"))
            assert head.startswith("HTTP/1.1 404 "), head
            w.close()
            head, _, w = await request(server.url("exec", "nope"))
            assert head.startswith("HTTP/1.1 404 "), head
            w.close()
            fresh = url(server)
            head, _, w = await request(fresh, method="PUT")
            assert head.startswith("HTTP/1.1 400 "), head
            w.close()
            head, _, w = await request(fresh, headers="")
            assert head.startswith("HTTP/1.1 400 "), head
            w.close()
            head, _, w = await request(
                fresh,
                headers="Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n",
            )
            assert head.startswith("HTTP/1.1 403 "), head
            w.close()
            # the rejected requests did not use the token up
            client = await spdy(fresh)
            await client.close()
            # oversized request head
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /portforward/x HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            head = (await r.readuntil(b"\r\n\r\n")).decode()
            assert head.startswith("HTTP/1.1 431 "), head
            w.close()

    run(test)


def test_token_expires() -> None:
    async def test() -> None:
        async with setup() as (server, _):
            server.ttl = 0.05
            u = url(server)
            await asyncio.sleep(0.1)
            head, _, w = await request(u)
            assert head.startswith("HTTP/1.1 404 "), head
            w.close()

    run(test)


def test_idle_sessions_are_closed_and_busy_ones_kept() -> None:
    async def test() -> None:
        async with setup() as (server, _):
            server.idle_timeout = 0.5
            busy = await spdy(url(server))
            idle = await spdy(url(server))
            for _ in range(10):  # 1 s of pings: bytes move, the session stays
                await busy.ping()
                await asyncio.sleep(0.1)
            assert not busy.closed.is_set()
            await asyncio.wait_for(idle.closed.wait(), 2)  # the idle one was closed
            await busy.close()

    run(test)


def test_parse_request() -> None:
    req = parse_request(b"POST /a/b HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nX:  y \r\n\r\n")
    assert req.method == "POST" and req.path == "/a/b"
    assert req.values("connection") == ["keep-alive", "Upgrade"]
    assert req.headers["x"] == ["y"]
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/2\r\n\r\n", b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"):
        with pytest.raises(BadRequest):
            parse_request(bad)


def test_many_sessions_and_stop_with_sessions_open() -> None:
    async def test() -> None:
        async with setup() as (server, port):
            clients = [await spdy(url(server)) for _ in range(4)]
            got = await asyncio.gather(
                *(forward(c, port, 0, f"s{i}".encode()) for i, c in enumerate(clients))
            )
            assert got == [(f"hello s{i}".encode(), b"") for i in range(4)]
            # a forward left open (no FIN from the client) when the server stops
            err = await clients[0].open(
                {"streamtype": "error", "port": str(port), "requestid": "9"}
            )
            await server.stop()
            assert await err.read_all() == b""
            for c in clients:
                await asyncio.wait_for(c.closed.wait(), 5)
                await c.close()

    run(test)
