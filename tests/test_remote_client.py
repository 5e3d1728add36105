"""The remotecommand client (crispy.streaming.remote): its pure protocol logic, then whole
sessions against small fake servers in-process (SPDY: crispy's streaming server and server
session; WebSocket: aiohttp's server), over 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crispy.streaming import channels, client, remote, status
from crispy.streaming.remote import (
    NO_EXIT_CODE,
    SPDY_PROTOCOLS,
    WEBSOCKET_PROTOCOLS,
    RemoteCommand,
    RemoteError,
    decode_status,
    offers,
    resize_message,
    spdy_streams,
    websocket_url,
)
from crispy.streaming.server import Request, StreamingServer, upgrade_response
from crispy.streaming.session import SpdySession, SpdyStream

V5, V4, V3, V2, V1 = (
    channels.V5_CHANNEL,
    channels.V4_CHANNEL,
    channels.V3_CHANNEL,
    channels.V2_CHANNEL,
    channels.CHANNEL,
)
V4_B64, B64 = channels.V4_BASE64_CHANNEL, channels.BASE64_CHANNEL


def run(test: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


# -- offers, streams, resize -------------------------------------------------------------------


def test_offers_default_to_client_go_order() -> None:
    assert offers("spdy") == SPDY_PROTOCOLS == (V4, V3, V2, V1)
    assert offers("websocket") == WEBSOCKET_PROTOCOLS == (V5, V4, V4_B64, B64, V1)
    assert offers("spdy", [V2, V4]) == (V2, V4)
    assert offers("websocket", [V4_B64]) == (V4_B64,)


@pytest.mark.parametrize(
    ("transport", "protocols"),
    [("spdy", [V5]), ("spdy", [V4_B64]), ("websocket", ["nope"]), ("spdy", []), ("gopher", None)],
)
def test_offers_rejects_what_the_transport_cannot_speak(
    transport: str, protocols: list[str] | None
) -> None:
    with pytest.raises(ValueError):
        offers(transport, protocols)


def test_spdy_streams_in_client_go_order() -> None:
    every = {"stdin": True, "stdout": True, "stderr": True}
    assert spdy_streams(V4, **every, tty=False) == ["error", "stdin", "stdout", "stderr"]
    # a tty merges stderr into stdout and (v3 on) adds the resize stream
    assert spdy_streams(V4, **every, tty=True) == ["error", "stdin", "stdout", "resize"]
    assert spdy_streams(V3, **every, tty=True) == ["error", "stdin", "stdout", "resize"]
    assert spdy_streams(V2, **every, tty=True) == ["error", "stdin", "stdout"]
    assert spdy_streams(V1, **every, tty=True) == ["error", "stdin", "stdout"]
    only_out = spdy_streams(V4, stdin=False, stdout=True, stderr=False, tty=False)
    assert only_out == ["error", "stdout"]


def test_resize_message_is_terminal_size_json() -> None:
    message = resize_message(80, 24)
    assert message == b'{"Width":80,"Height":24}\n'
    assert status.parse_resize(message) == (80, 24)
    assert status.ResizeDecoder().feed(message + resize_message(1, 65535)) == [
        (80, 24),
        (1, 65535),
    ]
    for bad in [(0, 24), (80, 0), (65536, 1), (-1, 5)]:
        with pytest.raises(ValueError):
            resize_message(*bad)
    with pytest.raises(ValueError):
        resize_message(True, 24)


def test_websocket_url() -> None:
    assert websocket_url("http://127.0.0.1:1234/exec/tok?x=1") == "ws://127.0.0.1:1234/exec/tok?x=1"
    assert websocket_url("https://[::1]:1/attach/t") == "wss://[::1]:1/attach/t"
    assert websocket_url("ws://h/x") == "ws://h/x"
    with pytest.raises(RemoteError):
        websocket_url("ftp://h/x")


# -- status decoding -------------------------------------------------------------------------

STATUS_PROTOCOLS = [V5, V4, V4_B64, channels.V5_BASE64_CHANNEL]
LEGACY_PROTOCOLS = [V3, V2, V1, B64, channels.NO_PROTOCOL]


@pytest.mark.parametrize("protocol", STATUS_PROTOCOLS)
def test_decode_status_v4(protocol: str) -> None:
    assert decode_status(protocol, status.success()) == (0, "")
    for code in (1, 3, 127, 255):
        assert decode_status(protocol, status.exit_code(code, ["sh", "-c", "x"])) == (code, "")
    failure = status.error("container not running", reason="InternalError", code=500)
    assert decode_status(protocol, failure) == (NO_EXIT_CODE, "container not running")
    assert decode_status(protocol, b'{"status":"Failure","reason":"Conflict"}') == (
        NO_EXIT_CODE,
        "Conflict",
    )
    code, error = decode_status(protocol, b"")
    assert code == NO_EXIT_CODE and "without an exit status" in error


def _non_zero(causes: Any) -> bytes:
    doc = {"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": causes}}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (b"not json", "error stream protocol error"),
        (b"[1, 2]", "not a Status"),
        (b'{"status":"Weird"}', "unknown status"),
        (b'{"status":"Failure","reason":"NonZeroExitCode"}', "details must be set"),
        (_non_zero([]), "no ExitCode cause"),
        (_non_zero([{"reason": "Other", "message": "3"}]), "no ExitCode cause"),
        (_non_zero([{"reason": "ExitCode", "message": "256"}]), "invalid exit code"),
        (_non_zero([{"reason": "ExitCode", "message": "-1"}]), "invalid exit code"),
        (_non_zero([{"reason": "ExitCode", "message": " 3"}]), "invalid exit code"),
        (_non_zero([{"reason": "ExitCode", "message": 3}]), "invalid exit code"),
    ],
)
def test_decode_status_v4_protocol_errors(message: bytes, complaint: str) -> None:
    with pytest.raises(RemoteError, match=complaint):
        decode_status(V4, message)


def test_decode_status_v4_takes_the_exit_code_cause() -> None:
    causes = [{"reason": "Other", "message": "x"}, {"reason": "ExitCode", "message": "42"}]
    assert decode_status(V5, _non_zero(causes)) == (42, "")


@pytest.mark.parametrize("protocol", LEGACY_PROTOCOLS)
def test_decode_status_legacy_text(protocol: str) -> None:
    assert decode_status(protocol, b"") == (0, "")
    assert decode_status(protocol, b"boom\n") == (NO_EXIT_CODE, "boom")
    # kubelet's v1-v3 text for a non-zero exit is the v4 Status's message
    kubelet = (
        b"command terminated with non-zero exit code: "
        b"error executing command [sh -c exit 3], exit code 3"
    )
    assert decode_status(protocol, kubelet) == (3, "")
    # a v4 Status is only text to a legacy protocol
    assert decode_status(protocol, status.success())[0] == NO_EXIT_CODE


# -- SPDY sessions against a fake exec server ------------------------------------------------

Script = Callable[[dict[str, SpdyStream]], Awaitable[bytes]]


@dataclass
class FakeExec:
    """What one SPDY exec URL does: which streams to wait for and the command's behaviour."""

    expect: list[str]
    script: Script
    flow_control: bool = True
    spdystream: bool = False  # never hand back window (like Go's spdystream)
    seen: dict[str, Any] = field(default_factory=dict)


class NoCreditSession(SpdySession):
    async def _consumed(self, stream: SpdyStream, n: int) -> None:
        return None


async def serve_spdy(
    target: FakeExec,
    protocol: str,
    req: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    target.seen["method"] = req.method
    target.seen["offered"] = req.headers.get("x-stream-protocol-version", [])
    target.seen["protocol"] = protocol
    writer.write(upgrade_response(protocol))
    await writer.drain()
    kind = NoCreditSession if target.spdystream else SpdySession
    async with kind(reader, writer, send_flow_control=target.flow_control) as session:
        streams: dict[str, SpdyStream] = {}
        order = []
        while len(streams) < len(target.expect):
            stream = await session.accept()
            name = stream.headers["streamtype"][0]
            order.append(name)
            streams[name] = stream
        target.seen["streams"] = order
        result = await target.script(streams)
        if result == status.success() and not channels.protocol(protocol).status_errors:
            result = b""  # kubelet's v1-v3 write nothing on success
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
        await streams["error"].write(result)
        await streams["error"].close()
        # the client goes away once it has read everything
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await session.wait_closed()


@contextlib.asynccontextmanager
async def spdy_server(
    protocols: tuple[str, ...] = SPDY_PROTOCOLS,
) -> AsyncIterator[StreamingServer]:
    server = StreamingServer("127.0.0.1", 0)
    server.handle("exec", protocols, serve_spdy)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def spdy_url(server: StreamingServer, target: FakeExec) -> str:
    return server.url("exec", server.register("exec", target))


async def cat(streams: dict[str, SpdyStream]) -> bytes:
    stdout = streams.get("stdout")
    while chunk := await streams["stdin"].read():
        if stdout is not None:
            await stdout.write(chunk)
    return status.success()


def test_spdy_run_offers_streams_exit_code() -> None:
    async def script(streams: dict[str, SpdyStream]) -> bytes:
        await streams["stdout"].write(b"out\n")
        await streams["stderr"].write(b"err\n")
        return status.exit_code(3, ["sh"])

    async def test() -> None:
        async with spdy_server() as server:
            target = FakeExec(["error", "stdout", "stderr"], script)
            result = await remote.run(spdy_url(server, target))
            assert target.seen["method"] == "POST"
            assert target.seen["offered"] == list(SPDY_PROTOCOLS)
            assert target.seen["streams"] == ["error", "stdout", "stderr"]
            assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
            assert (result.exit_code, result.error, result.protocol) == (3, "", V4)

    run(test)


def test_spdy_cat_stdin_eof_and_legacy_protocol() -> None:
    async def test() -> None:
        async with spdy_server(protocols=(V2, V1)) as server:
            target = FakeExec(["error", "stdin", "stdout"], cat)
            result = await remote.run(spdy_url(server, target), stdin=b"hello\n", stderr=False)
            assert target.seen["protocol"] == V2
            assert target.seen["streams"] == ["error", "stdin", "stdout"]
            assert (result.stdout, result.exit_code, result.error) == (b"hello\n", 0, "")

    run(test)


def test_spdy_error_status_and_legacy_error_text() -> None:
    async def failing(streams: dict[str, SpdyStream]) -> bytes:
        return status.error("no such process", reason="InternalError", code=500)

    async def legacy(streams: dict[str, SpdyStream]) -> bytes:
        return b"something broke"

    async def test() -> None:
        async with spdy_server() as server:
            r = await remote.run(spdy_url(server, FakeExec(["error", "stdout", "stderr"], failing)))
            assert (r.exit_code, r.error) == (NO_EXIT_CODE, "no such process")
        async with spdy_server(protocols=(V3,)) as server:
            r = await remote.run(spdy_url(server, FakeExec(["error", "stdout", "stderr"], legacy)))
            assert (r.exit_code, r.error, r.protocol) == (NO_EXIT_CODE, "something broke", V3)

    run(test)


def test_spdy_tty_resize_stream() -> None:
    async def script(streams: dict[str, SpdyStream]) -> bytes:
        decoder = status.ResizeDecoder()
        sizes: list[tuple[int, int]] = []
        while len(sizes) < 2:
            sizes += decoder.feed(await streams["resize"].read())
        await streams["stdout"].write(json.dumps(sizes).encode())
        return status.success()

    async def test() -> None:
        async with spdy_server() as server:
            target = FakeExec(["error", "stdout", "resize"], script)
            cmd = await RemoteCommand.connect(
                spdy_url(server, target), stdin=False, stdout=True, stderr=True, tty=True
            )
            async with cmd:
                await cmd.resize(100, 30)
                await cmd.resize(120, 40)
                out = b""
                while chunk := await cmd.read_stdout():
                    out += chunk
                assert await cmd.read_stderr() == b""  # never requested with a tty
                assert await cmd.wait() == (0, "")
            assert target.seen["streams"] == ["error", "stdout", "resize"]
            assert json.loads(out) == [[100, 30], [120, 40]]

    run(test)


@pytest.mark.parametrize("spdystream", [False, True])
def test_spdy_large_stdin_streams(spdystream: bool) -> None:
    """Stdin bigger than every window and buffer goes through while stdout is read, whether
    the server returns window (crispyd) or not (spdystream): the client keeps to none, and
    never sends WINDOW_UPDATE itself."""
    data = bytes(range(256)) * (48 * 1024 if not spdystream else 4 * 1024)

    async def test() -> None:
        async with spdy_server() as server:
            target = FakeExec(
                ["error", "stdin", "stdout"], cat, flow_control=False, spdystream=spdystream
            )
            start = time.monotonic()
            result = await remote.run(spdy_url(server, target), stdin=data, stderr=False)
            took = time.monotonic() - start
            assert result.exit_code == 0 and result.stdout == data
            assert took < 10, took

    run(test, timeout=60)


def test_spdy_unread_output_stays_bounded() -> None:
    """A server that ignores our window (as spdystream does) cannot make us buffer more than
    about MAX_BUFFERED of a stream nobody reads: the session stops reading the socket."""
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB

    async def flood(streams: dict[str, SpdyStream]) -> bytes:
        await streams["stdout"].write(data)
        return status.success()

    async def test() -> None:
        async with spdy_server() as server:
            target = FakeExec(["error", "stdout"], flood, flow_control=False)
            cmd = await RemoteCommand.connect(
                spdy_url(server, target), stdin=False, stdout=True, stderr=False, tty=False
            )
            async with cmd:
                assert isinstance(cmd, remote._SpdyCommand)
                await asyncio.sleep(0.5)
                buffered = len(cmd.streams["stdout"].buf)
                assert 0 < buffered <= client.MAX_BUFFERED + 64 * 1024, buffered
                out = bytearray()
                while chunk := await cmd.read_stdout():
                    out += chunk
                assert out == data
                assert await cmd.wait() == (0, "")

    run(test)


def test_spdy_command_ending_early_leaves_stdin() -> None:
    async def head(streams: dict[str, SpdyStream]) -> bytes:
        first = await streams["stdin"].read()
        await streams["stdout"].write(first[:5])
        return status.exit_code(1)

    async def test() -> None:
        async with spdy_server() as server:
            target = FakeExec(["error", "stdin", "stdout", "stderr"], head, spdystream=True)
            result = await remote.run(spdy_url(server, target), stdin=b"x" * (4 << 20))
            assert (result.stdout, result.exit_code) == (b"xxxxx", 1)

    run(test)


def test_spdy_refused_upgrade_carries_status_and_body() -> None:
    async def test() -> None:
        async with spdy_server() as server:
            with pytest.raises(RemoteError) as info:
                await remote.run(server.url("exec", "no-such-token"))
            assert info.value.status == 404
            assert "unknown or expired token" in info.value.body
            assert "unknown or expired token" in str(info.value)
        async with spdy_server(protocols=(V4,)) as server:
            # nothing this server speaks: kubelet's 403
            target = FakeExec(["error"], cat)
            with pytest.raises(RemoteError) as info:
                await remote.run(spdy_url(server, target), protocols=[V2], stdout=False)
            assert info.value.status == 403
            assert "unable to negotiate protocol" in info.value.body

    run(test)


# -- WebSocket sessions against a fake aiohttp server ----------------------------------------

WsScript = Callable[[web.WebSocketResponse, str], Awaitable[None]]


async def send(ws: web.WebSocketResponse, protocol: str, channel: int, data: bytes) -> None:
    message = channels.encode(protocol, channel, data)
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


async def ws_cat(ws: web.WebSocketResponse, protocol: str) -> None:
    """Echo stdin to stdout until the v5 close signal, with empty messages sprinkled in."""
    await send(ws, protocol, channels.STDOUT, b"")  # kubelet's "streams are ready"
    if channels.protocol(protocol).binary:
        await ws.send_bytes(b"")
    async for msg in ws:
        channel, payload = channels.decode(protocol, msg.data)
        if payload is channels.CLOSE:
            break
        if channel == channels.STDIN:
            await send(ws, protocol, channels.STDOUT, payload)
            await send(ws, protocol, channels.STDERR, b"")
    await send(ws, protocol, channels.ERROR, status.exit_code(7))


@contextlib.asynccontextmanager
async def ws_server(
    script: WsScript, supported: tuple[str, ...] = channels.EXEC_PROTOCOLS
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path != "/exec/good":
            return web.Response(status=404, text="unknown or expired token\n")
        seen["offered"] = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = web.WebSocketResponse(protocols=supported)
        await ws.prepare(request)
        seen["protocol"] = ws.ws_protocol
        await script(ws, ws.ws_protocol or "")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def test_websocket_v5_cat_with_stdin_close() -> None:
    async def test() -> None:
        async with ws_server(ws_cat) as (base, seen):
            data = b"hello\n" * 20000
            result = await remote.run(f"{base}/exec/good", stdin=data, transport="websocket")
            assert seen["offered"] == ",".join(WEBSOCKET_PROTOCOLS)
            assert seen["protocol"] == V5 == result.protocol
            assert (result.stdout, result.stderr) == (data, b"")
            assert (result.exit_code, result.error) == (7, "")

    run(test)


def test_websocket_base64_text_frames() -> None:
    async def script(ws: web.WebSocketResponse, protocol: str) -> None:
        assert protocol == V4_B64
        await send(ws, protocol, channels.STDOUT, b"")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.TEXT  # base64 protocols send text
        channel, payload = channels.decode(protocol, msg.data)
        assert channel == channels.STDIN and isinstance(payload, bytes)
        resize = await ws.receive()
        channel, size = channels.decode(protocol, resize.data)
        assert channel == channels.RESIZE
        assert isinstance(size, bytes)
        await send(ws, protocol, channels.STDOUT, payload + b"|" + size.strip())
        await send(ws, protocol, channels.ERROR, status.success())

    async def test() -> None:
        async with ws_server(script) as (base, _):
            cmd = await RemoteCommand.connect(
                f"{base}/exec/good",
                stdin=True,
                stdout=True,
                stderr=False,
                tty=True,
                transport="websocket",
                protocols=[V4_B64],
            )
            async with cmd:
                assert cmd.protocol == V4_B64 and cmd.transport == "websocket"
                await cmd.write_stdin(b"\x00\xffbin")
                await cmd.resize(90, 33)
                await cmd.close_stdin()  # v4 cannot say it: a no-op
                out = b""
                while chunk := await cmd.read_stdout():
                    out += chunk
                assert out == b'\x00\xffbin|{"Width":90,"Height":33}'
                assert await cmd.wait() == (0, "")

    run(test)


def test_websocket_legacy_channel_protocol() -> None:
    async def script(ws: web.WebSocketResponse, protocol: str) -> None:
        await send(ws, protocol, channels.STDERR, b"warn\n")
        await send(ws, protocol, channels.ERROR, b"it failed")

    async def test() -> None:
        async with ws_server(script, supported=(V1,)) as (base, seen):
            result = await remote.run(f"{base}/exec/good", transport="websocket")
            assert seen["protocol"] == V1 == result.protocol
            assert (result.stderr, result.exit_code, result.error) == (
                b"warn\n",
                NO_EXIT_CODE,
                "it failed",
            )

    run(test)


def test_websocket_refused_upgrade_carries_status_and_body() -> None:
    async def test() -> None:
        async with ws_server(ws_cat) as (base, _):
            with pytest.raises(RemoteError) as info:
                await remote.run(f"{base}/exec/expired", transport="websocket")
            assert info.value.status == 404
            assert "unknown or expired token" in info.value.body

    run(test)


def test_websocket_bad_frame_is_a_protocol_error() -> None:
    async def script(ws: web.WebSocketResponse, protocol: str) -> None:
        await ws.send_bytes(bytes([9]) + b"?")  # no channel 9 in exec

    async def test() -> None:
        async with ws_server(script) as (base, _):
            with pytest.raises(RemoteError, match="protocol error"):
                await remote.run(f"{base}/exec/good", transport="websocket")

    run(test)
