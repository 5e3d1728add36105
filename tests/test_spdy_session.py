"""SPDY/3.1 server session (crispy.streaming.session) against a test client over TCP loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from crispy.streaming.session import SessionClosed, SpdySession, SpdyStream, StreamReset
from crispy.streaming.spdy import (
    CANCEL,
    GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR,
    SETTINGS_INITIAL_WINDOW_SIZE,
    DataFrame,
    GoAway,
    Ping,
    ProtocolError,
    Setting,
    Settings,
    WindowUpdate,
)
from support.spdy_client import SpdyClient


def run(test: Callable[[], Awaitable[None]], timeout: float = 5) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def connected(**options: Any) -> AsyncIterator[tuple[SpdyClient, SpdySession]]:
    sessions: asyncio.Queue[SpdySession] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = SpdySession(reader, writer, **options)
        session.start()
        await sessions.put(session)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await SpdyClient.connect("127.0.0.1", port)
    session = await sessions.get()
    try:
        yield client, session
    finally:
        with contextlib.suppress(TimeoutError):
            await client.close()
        await session.close()
        server.close()
        await server.wait_closed()


async def read_all(stream: SpdyStream) -> bytes:
    out = bytearray()
    while chunk := await stream.read():
        out += chunk
    return bytes(out)


async def echo(stream: SpdyStream) -> None:
    """Echo until the client's FIN, then one more write (half-close) and our own FIN."""
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.write(b"bye:" + stream.headers["streamtype"][0].encode())
    await stream.close()


def test_three_streams_echo_and_half_close() -> None:
    async def main() -> None:
        async with connected() as (client, session):

            async def serve() -> list[SpdyStream]:
                streams = [await session.accept() for _ in range(3)]
                await asyncio.gather(*(echo(s) for s in streams))
                return streams

            server = asyncio.create_task(serve())
            kinds = ["stdin", "stdout", "stderr"]
            streams = [await client.open({"streamtype": k, "requestid": "0"}) for k in kinds]
            assert [s.id for s in streams] == [1, 3, 5]
            for round_ in range(3):
                for s, kind in zip(streams, kinds, strict=True):
                    msg = f"{kind}-{round_}".encode()
                    await s.write(msg)
                    got = b""
                    while len(got) < len(msg):
                        got += await s.read()
                    assert got == msg
            for s in streams:
                await s.close()  # our FIN; the server may still write
            for s, kind in zip(streams, kinds, strict=True):
                assert await s.read_all() == f"bye:{kind}".encode()
                assert s.fin
            accepted = await server
            assert [s.headers["streamtype"] for s in accepted] == [[k] for k in kinds]
            assert accepted[0].headers["requestid"] == ["0"]
            assert all(s.remote_closed and s.local_closed for s in accepted)

    run(main)


def test_one_mib_each_way_needs_window_updates() -> None:
    size = 1 << 20
    up, down = os.urandom(size), os.urandom(size)

    async def main() -> None:
        async with connected(send_flow_control=True) as (client, session):

            async def serve() -> bytes:
                stream = await session.accept()
                received, _ = await asyncio.gather(read_all(stream), stream.write(down))
                await stream.close()
                return received

            server = asyncio.create_task(serve())
            stream = await client.open({"streamtype": "stdout"})
            _, received = await asyncio.gather(stream.write(up, fin=True), stream.read_all())
            assert hashlib.sha256(received).digest() == hashlib.sha256(down).digest()
            assert hashlib.sha256(await server).digest() == hashlib.sha256(up).digest()
            updates = [f for f in client.frames if isinstance(f, WindowUpdate)]
            assert {u.stream_id for u in updates} == {0, stream.id}  # session and stream
            assert sum(u.delta for u in updates if u.stream_id == 0) >= size - 64 * 1024
            data = [f for f in client.frames if isinstance(f, DataFrame)]
            assert max(len(f.data) for f in data) <= 16 * 1024

    run(main)


def test_default_does_not_block_on_a_client_without_window_updates() -> None:
    # moby/spdystream neither sends nor honours WINDOW_UPDATE.
    size = 256 * 1024
    payload = os.urandom(size)

    async def main() -> None:
        async with connected() as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdout"})
            srv = await server
            await srv.write(payload)
            await srv.close()
            while not stream.fin:  # do not read(): that would send WINDOW_UPDATE
                stream.changed.clear()
                await stream.changed.wait()
            assert bytes(stream.buf) == payload
            assert not any(isinstance(f, WindowUpdate) for f in client.frames)

    run(main)


def test_settings_initial_window_size_limits_sends() -> None:
    async def main() -> None:
        async with connected(send_flow_control=True) as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdout"})
            srv = await server
            await client.send(Settings([Setting(0, SETTINGS_INITIAL_WINDOW_SIZE, 16)]))
            await client.ping()  # SETTINGS processed (frames are handled in order)
            writer = asyncio.create_task(srv.write(b"x" * 40))
            await asyncio.sleep(0.05)
            assert bytes(stream.buf) == b"x" * 16 and not writer.done()
            await client.send(WindowUpdate(stream.id, 24))
            await writer
            await client.ping()
            assert bytes(stream.buf) == b"x" * 40

    run(main)


def test_ping_is_echoed() -> None:
    async def main() -> None:
        async with connected() as (client, _session):
            await client.ping()
            await client.ping()
            assert [f.id for f in client.frames if isinstance(f, Ping)] == [1, 3]

    run(main)


def test_rst_stream_from_client_fails_reads_and_writes() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdin"})
            srv = await server
            reader = asyncio.create_task(srv.read())
            await asyncio.sleep(0)
            await stream.reset(CANCEL)
            with pytest.raises(StreamReset) as info:
                await reader
            assert info.value.status == CANCEL and info.value.by_peer
            with pytest.raises(StreamReset):
                await srv.write(b"late")
            # The session itself lives on.
            other = asyncio.create_task(session.accept())
            await client.open({"streamtype": "stdout"})
            assert (await other).id == 3

    run(main)


def test_server_reset_reaches_client() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdin"})
            (await server).reset(CANCEL)
            with pytest.raises(ConnectionResetError):
                await stream.read()

    run(main)


def test_goaway_from_client_closes_session() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            await client.send(GoAway(0, GOAWAY_OK))
            await asyncio.wait_for(session.wait_closed(), 2)
            assert session.error is None
            with pytest.raises(SessionClosed):
                await session.accept()
            await asyncio.wait_for(client.closed.wait(), 2)

    run(main)


def test_goaway_waits_for_open_streams() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdout"})
            srv = await server
            await client.send(GoAway(1, GOAWAY_OK))
            await client.ping()
            assert not session.closed
            await srv.write(b"last words")
            await srv.close()
            await stream.close()
            assert await stream.read_all() == b"last words"
            await asyncio.wait_for(session.wait_closed(), 2)

    run(main)


def test_garbage_ends_session_with_protocol_error() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            server = asyncio.create_task(session.accept())
            stream = await client.open({"streamtype": "stdout"})
            srv = await server
            await client.send_raw(b"\x80\x02\x00\x01" + b"\x00" * 12)  # SPDY/2 SYN_STREAM
            await asyncio.wait_for(session.wait_closed(), 2)
            assert isinstance(session.error, ProtocolError)
            await asyncio.wait_for(client.closed.wait(), 2)
            assert client.goaway is not None and client.goaway.status == GOAWAY_PROTOCOL_ERROR
            assert client.goaway.last_good_stream_id == stream.id
            with pytest.raises(SessionClosed):
                await srv.read()
            with pytest.raises(SessionClosed):
                await srv.write(b"x")

    run(main)


def test_client_disconnect_ends_session() -> None:
    async def main() -> None:
        async with connected() as (client, session):
            await client.close()
            await asyncio.wait_for(session.wait_closed(), 2)
            with pytest.raises(SessionClosed):
                await session.accept()

    run(main)


def test_a_client_ignoring_windows_cannot_make_the_server_buffer_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crispy.streaming import session as session_mod

    monkeypatch.setattr(session_mod, "MAX_BUFFERED", 256 * 1024)

    async def test() -> None:
        async with connected() as (client, session):
            stream, server_stream = await asyncio.gather(
                client.open({"kind": "flood"}), session.accept()
            )
            frame = b"z" * 16384

            async def flood() -> None:  # like spdystream: no regard for the windows
                for _ in range(1024):  # 16 MiB: more than loopback TCP buffers hold
                    await client.send(DataFrame(stream.id, frame))
                await client.send(DataFrame(stream.id, b"", fin=True))

            flooding = asyncio.create_task(flood())
            await asyncio.sleep(0.5)
            assert session._buffered() <= 256 * 1024 + 64 * 1024  # reading stopped
            assert not flooding.done()  # the client is held back by TCP
            got = hashlib.sha256()
            total = 0
            while chunk := await server_stream.read():
                got.update(chunk)
                total += len(chunk)
            await flooding
            assert total == 1024 * len(frame)
            assert got.digest() == hashlib.sha256(frame * 1024).digest()

    run(test, timeout=20)
