"""WebSocketConn (crispy.streaming.websocket) behind a real StreamingServer, in-process over
TCP loopback, against aiohttp's client and a hand-rolled one for raw frames."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest

from crispy.streaming import websocket
from crispy.streaming.server import Request, StreamingServer
from crispy.streaming.websocket import HandshakeError, WebSocketConn
from support.ws_client import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWsClient,
    WsClient,
    client_frame,
)

KIND = "ws"
Run = Callable[[WebSocketConn], Awaitable[Any]]


def run(test: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


class Endpoint:
    """What one token serves: accept with ``protocols``, then ``run(conn)``; the outcome
    (run's result or the HandshakeError) lands in ``result``."""

    def __init__(self, protocols: Sequence[str], run: Run, max_message: int = 16 << 20) -> None:
        self.protocols = protocols
        self.run = run
        self.max_message = max_message
        self.result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def outcome(self, timeout: float = 5) -> Any:
        return await asyncio.wait_for(asyncio.shield(self.result), timeout)


async def handler(
    target: Endpoint, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        conn = await WebSocketConn.accept(
            request, reader, writer, target.protocols, max_message=target.max_message
        )
    except HandshakeError as e:
        target.result.set_exception(e)
        return
    try:
        target.result.set_result(await target.run(conn))
    except Exception as e:
        target.result.set_exception(e)
    finally:
        await conn.close()


async def no_spdy(*args: Any) -> None:
    raise AssertionError("no SPDY in these tests")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Callable[[Endpoint], str]]:
    server = StreamingServer("127.0.0.1", 0)
    server.handle(KIND, [], no_spdy, handler)
    await server.start()
    try:
        yield lambda endpoint: server.url(KIND, server.register(KIND, endpoint))
    finally:
        await server.stop()


async def echo(conn: WebSocketConn) -> tuple[int, int | None]:
    """Echo every message; (messages echoed, the peer's close code)."""
    n = 0
    while (message := await conn.receive()) is not None:
        await conn.send(message)
        n += 1
    return n, conn.close_code


def test_text_binary_and_client_close() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint(["b", "a"], echo)
            async with await WsClient.connect(url(ep), ["x", "a", "b"]) as client:
                assert client.protocol == "a"  # the client's first supported choice
                await client.ws.send_str("héllo ✓")
                await client.ws.send_bytes(b"\x00\xff" * 3)
                await client.ws.send_bytes(b"")
                await client.ws.send_str("")
                assert await client.receive() == "héllo ✓"
                assert await client.receive() == b"\x00\xff" * 3
                assert await client.receive() == b""
                assert await client.receive() == ""
                await client.ws.close(code=4001)
            assert await ep.outcome() == (4, 4001)

    run(test)


def test_no_protocol_offered() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint(["a", ""], echo)
            async with await WsClient.connect(url(ep)) as client:
                assert client.ws.protocol is None
                await client.ws.send_bytes(b"x")
                assert await client.receive() == b"x"
            assert await ep.outcome() == (1, 1000)

            async def protocol(conn: WebSocketConn) -> str:
                return conn.protocol

            ep = Endpoint(["a", ""], protocol)
            async with await WsClient.connect(url(ep)):
                assert await ep.outcome() == ""

    run(test)


def test_fragmented_messages_with_interleaved_ping() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint([""], echo)
            client = await RawWsClient.connect(url(ep))
            assert client.head.startswith("HTTP/1.1 101 "), client.head
            text = "é✓".encode()  # split inside a UTF-8 sequence
            await client.send(
                client_frame(OP_TEXT, text[:1], fin=False)
                + client_frame(OP_CONT, text[1:4], fin=False)
                + client_frame(OP_PING, b"mid")  # control frames may come between fragments
                + client_frame(OP_CONT, text[4:])
            )
            assert await client.read_frame() == (True, OP_PONG, b"mid")
            assert await client.read_frame() == (True, OP_TEXT, text)
            big = bytes(range(256)) * 1024
            await client.send(
                b"".join(
                    client_frame(OP_CONT if i else OP_BINARY, big[i : i + 10000], fin=False)
                    for i in range(0, len(big), 10000)
                )
                + client_frame(OP_CONT, b"!")
            )
            fin, op, payload = await client.read_frame()
            assert (fin, op) == (True, OP_BINARY) and payload == big + b"!"
            await client.send(client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"done"))
            fin, op, payload = await client.read_frame()
            assert (fin, op) == (True, OP_CLOSE) and payload[:2] == struct.pack("!H", 1000)
            assert await client.reader.read() == b""  # the server then drops the connection
            await client.close()
            assert await ep.outcome() == (2, 1000)

    run(test)


def test_ping_is_answered() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint([""], echo)
            async with await WsClient.connect(url(ep), autoping=False) as client:
                await client.ws.ping(b"are you there")
                msg = await client.ws.receive(5)
                assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"are you there"

    run(test)


def test_server_close_handshake() -> None:
    async def test() -> None:
        async with serving() as url:

            async def goodbye(conn: WebSocketConn) -> tuple[float, bool]:
                await conn.send("bye")
                start = time.monotonic()
                await conn.close(4000, "done here")
                await conn.close()  # idempotent
                with pytest.raises(ConnectionError):
                    await conn.send(b"late")
                assert await conn.receive() is None
                return time.monotonic() - start, conn.closed

            ep = Endpoint([""], goodbye)
            async with await WsClient.connect(url(ep)) as client:
                assert await client.receive() == "bye"
                msg = await client.ws.receive(5)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                assert (msg.data, msg.extra) == (4000, "done here")
            took, closed = await ep.outcome()
            assert closed and took < 1.0  # the client answered: no waiting for the timeout

    run(test)


def test_close_gives_up_on_a_silent_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.3)

    async def test() -> None:
        async with serving() as url:

            async def close(conn: WebSocketConn) -> float:
                start = time.monotonic()
                await conn.close()
                return time.monotonic() - start

            ep = Endpoint([""], close)
            client = await RawWsClient.connect(url(ep))
            fin, op, payload = await client.read_frame()
            assert fin and op == OP_CLOSE and payload == struct.pack("!H", 1000)
            took = await ep.outcome()  # we never answer the Close
            assert 0.25 < took < 2
            assert await client.reader.read() == b""
            await client.close()

    run(test)


def test_oversized_message_closes_with_1009() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint([""], echo, max_message=1000)
            async with await WsClient.connect(url(ep)) as client:
                await client.ws.send_bytes(b"a" * 1000)  # at the limit: fine
                assert await client.receive() == b"a" * 1000
                await client.ws.send_bytes(b"a" * 1001)
                msg = await client.ws.receive(5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
            assert (await ep.outcome())[0] == 1

            # in fragments: refused as soon as the total passes the limit
            ep = Endpoint([""], echo, max_message=1000)
            raw = await RawWsClient.connect(url(ep))
            await raw.send(client_frame(OP_BINARY, b"x" * 600, fin=False))
            await raw.send(client_frame(OP_CONT, b"x" * 600, fin=False))
            fin, op, payload = await raw.read_frame()
            assert fin and op == OP_CLOSE and payload[:2] == struct.pack("!H", 1009)
            await raw.send(client_frame(OP_CLOSE, struct.pack("!H", 1009)))
            assert await raw.reader.read() == b""
            await raw.close()
            assert (await ep.outcome())[0] == 0

    run(test)


def test_protocol_error_closes_with_1002() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint([""], echo)
            raw = await RawWsClient.connect(url(ep))
            raw.writer.write(bytes([0x82, 3]) + b"abc")  # unmasked client frame
            fin, op, payload = await raw.read_frame()
            assert fin and op == OP_CLOSE and payload[:2] == struct.pack("!H", 1002)
            assert await raw.reader.read() == b""
            await raw.close()
            assert await ep.outcome() == (0, None)

    run(test)


def test_bad_handshake_is_400() -> None:
    async def test() -> None:
        async with serving() as url:
            for headers in (
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n",
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n",
            ):
                ep = Endpoint([""], echo)
                raw = await RawWsClient.connect(url(ep), headers=headers)
                assert raw.head.startswith("HTTP/1.1 400 Bad Request\r\n"), raw.head
                body = (await raw.reader.read()).decode()
                assert body.startswith("bad WebSocket handshake"), body
                await raw.close()
                with pytest.raises(HandshakeError):
                    await ep.outcome()

    run(test)


def test_protocol_mismatch_is_403() -> None:
    async def test() -> None:
        async with serving() as url:
            for offered in (["v9.nope"], []):
                ep = Endpoint(["a"], echo)
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await WsClient.connect(url(ep), offered)
                assert e.value.status == 403
                with pytest.raises(HandshakeError, match="unable to negotiate protocol"):
                    await ep.outcome()

    run(test)


def test_megabytes_round_trip_and_concurrent_senders() -> None:
    async def test() -> None:
        async with serving() as url:
            ep = Endpoint([""], echo)
            async with await WsClient.connect(url(ep)) as client:
                big = bytes(range(256)) * (8 << 12)  # 8 MiB in one message
                chunks = [bytes([i]) * 65536 for i in range(64)]

                async def send_all() -> None:
                    await client.ws.send_bytes(big)
                    for c in chunks:
                        await client.ws.send_bytes(c)

                sender = asyncio.create_task(send_all())
                assert await client.receive() == big
                for c in chunks:
                    assert await client.receive() == c
                await sender
            assert await ep.outcome() == (65, 1000)

            async def burst(conn: WebSocketConn) -> None:
                async def one(k: int) -> None:
                    for i in range(50):
                        await conn.send(f"{k}:{i}:".encode() + bytes(30000))

                await asyncio.gather(*(one(k) for k in range(4)))

            ep = Endpoint([""], burst)
            async with await WsClient.connect(url(ep)) as client:
                got: dict[int, list[int]] = {k: [] for k in range(4)}
                for _ in range(200):
                    message = await client.receive()
                    assert isinstance(message, bytes)
                    k, i, rest = message.split(b":", 2)
                    assert rest == bytes(30000)  # never interleaved with another message
                    got[int(k)].append(int(i))
                assert got == {k: list(range(50)) for k in range(4)}
                await ep.outcome()

    run(test)


def test_throughput() -> None:
    """100 MiB each way through WebSocketConn in well under the time limit."""

    async def test() -> None:
        async with serving() as url:
            total = 100 << 20
            chunk = bytes(1 << 20)

            async def sink(conn: WebSocketConn) -> int:
                n = 0
                while n < total:
                    message = await conn.receive()
                    assert isinstance(message, bytes)
                    n += len(message)
                for _ in range(total // len(chunk)):
                    await conn.send(chunk)
                return n

            ep = Endpoint([""], sink)
            start = time.monotonic()
            async with await WsClient.connect(url(ep)) as client:
                for _ in range(total // len(chunk)):
                    await client.ws.send_bytes(chunk)
                n = 0
                while n < total:
                    message = await client.receive(30)
                    assert isinstance(message, bytes)
                    n += len(message)
                assert await ep.outcome() == total
            took = time.monotonic() - start
            assert took < 10, f"{2 * total >> 20} MiB took {took:.1f}s"

    run(test, 60)
