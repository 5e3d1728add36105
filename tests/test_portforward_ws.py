"""Port-forward over WebSocket: the wsstream channel protocols and SPDY tunnelled in WebSocket.

In-process tests run a real StreamingServer on 127.0.0.1 with host-network targets (netns ""),
so the "pod" is a listener on 127.0.0.1; the last test goes through crispyd into a real pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.streaming import channels, portforward, portforward_ws
from crispy.streaming.portforward_ws import parse_ports
from crispy.streaming.server import StreamingServer
from support.containers import container_config, new_pod, run
from support.portforward_client import forward
from support.registry_fixtures import TestImages
from support.ws_client import RawWsClient, WsClient, portforward_channels, spdy_tunnel, with_ports

GET = b"GET / HTTP/1.0\r\n\r\n"


def arun(test: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


class Pods:
    """Listeners on 127.0.0.1 standing in for pod ports."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.closed = asyncio.Queue[bytes]()  # what each echo connection got, once it ended

    async def listen(
        self, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> int:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def http(self, name: str) -> int:
        """Answers one request with a response naming ``name``, then closes (HTTP/1.0)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            line = request.split(b"\r\n")[0].decode()
            writer.write(f"HTTP/1.0 200 OK\r\n\r\n{name} got {line}".encode())
            await writer.drain()
            writer.close()

        return await self.listen(serve)

    async def echo(self) -> int:
        """Echoes until the client side closes; then reports everything it got."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got = bytearray()
            while data := await reader.read(65536):
                got += data
                writer.write(data)
                await writer.drain()
            writer.close()
            await self.closed.put(bytes(got))

        return await self.listen(serve)

    async def hello(self) -> int:
        """Reads until EOF, answers ``hello <what it read>`` (the SPDY tests' pod)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read()
            writer.write(b"hello " + data)
            await writer.drain()
            writer.close()

        return await self.listen(serve)

    def close(self) -> None:
        for server in self.servers:
            server.close()


@contextlib.asynccontextmanager
async def setup() -> AsyncIterator[tuple[Callable[[], str], Pods]]:
    """A streaming server serving port-forward like crispyd, a fresh-URL maker, and pods."""
    server = StreamingServer("127.0.0.1", 0)
    server.handle(portforward.KIND, [portforward.PROTOCOL], portforward.serve, portforward_ws.serve)
    await server.start()
    pods = Pods()

    def url() -> str:
        token = server.register(portforward.KIND, portforward.PortForwardTarget("pod1", ""))
        return server.url(portforward.KIND, token)

    try:
        yield url, pods
    finally:
        await server.stop()
        pods.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.parametrize(
    "protocol", [channels.V4_CHANNEL, channels.V4_BASE64_CHANNEL, channels.NO_PROTOCOL]
)
def test_http_get_through_channels(protocol: str) -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            port = await pods.http("pod")
            client, count = await portforward_channels(url(), [port], protocol)
            async with client:
                await client.send_channel(0, GET, count=count)
                # the pod closes after answering: its forward ends, and with it the session
                got = await client.collect(count=count)
                assert client.ws.close_code == 1000
            assert got == {0: b"HTTP/1.0 200 OK\r\n\r\npod got GET / HTTP/1.0", 1: b""}

    arun(test)


def test_two_ports_at_once_and_a_refused_one() -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            a, b = await pods.http("A"), await pods.http("B")
            with refused_port() as closed:
                client, count = await portforward_channels(url(), [a, closed, b])
                async with client:
                    await client.send_channel(4, b"GET /b HTTP/1.0\r\n\r\n", count=count)
                    await client.send_channel(0, b"GET /a HTTP/1.0\r\n\r\n", count=count)
                    await client.send_channel(2, b"to nowhere", count=count)
                    got = await client.collect(count=count)
            assert got[0] == b"HTTP/1.0 200 OK\r\n\r\nA got GET /a HTTP/1.0"
            assert got[4] == b"HTTP/1.0 200 OK\r\n\r\nB got GET /b HTTP/1.0"
            assert got[1] == got[5] == got[2] == b""
            error = got[3].decode()
            assert error.startswith(f"error forwarding port {closed} to pod pod1, uid : "), error
            assert "refused" in error

    arun(test)


def test_refused_port_only_reports_and_ends() -> None:
    async def test() -> None:
        async with setup() as (url, _):
            with refused_port() as closed:
                client, count = await portforward_channels(url(), [closed])
                async with client:
                    got = await client.collect(count=count)
            assert got[0] == b"" and b"refused" in got[1], got

    arun(test)


def test_client_close_ends_pod_connection_and_big_transfer() -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            port = await pods.echo()
            client, count = await portforward_channels(url(), [port], channels.V4_CHANNEL)
            payload = bytes(range(256)) * 16384  # 4 MiB, both ways

            async def send() -> None:
                for i in range(0, len(payload), 100000):
                    await client.send_channel(0, payload[i : i + 100000], count=count)

            sender = asyncio.create_task(send())
            back = bytearray()
            while len(back) < len(payload):
                got = await client.receive_channel(count=count)
                assert got is not None and got[0] == 0
                back += got[1]
            await sender
            assert back == payload
            # v4 has no half-close: only closing the WebSocket ends the forward
            await client.close()
            assert await asyncio.wait_for(pods.closed.get(), 5) == payload

    arun(test)


def test_bad_ports_are_400() -> None:
    assert parse_ports("/portforward/t?port=80&port=443,8080") == [80, 443, 8080]
    for query in ("", "?port=", "?port=0", "?port=x", "?port=70000", "?port=1,,2", "?port=+1"):
        with pytest.raises(ValueError):
            parse_ports("/portforward/t" + query)

    async def test() -> None:
        async with setup() as (url, _):
            for query in ("", "?port=", "?port=0", "?port=abc", "?port=65536", "?port=80,"):
                raw = await RawWsClient.connect(url() + query, [channels.V4_CHANNEL])
                assert raw.head.startswith("HTTP/1.1 400 "), (query, raw.head)
                body = await raw.reader.read()
                assert b"port" in body, body
                await raw.close()

    arun(test)


def test_unknown_protocol_is_403_and_used_or_unknown_token_404() -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await WsClient.connect(with_ports(url(), 80), [channels.V5_CHANNEL])
            assert e.value.status == 403

            port = await pods.http("pod")
            used = url()
            client, _ = await portforward_channels(used, [port])
            await client.close()
            for bad in (used, used.rsplit("/", 1)[0] + "/unknown"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await WsClient.connect(with_ports(bad, port), [channels.V4_CHANNEL])
                assert e.value.status == 404

    arun(test)


def test_spdy_tunnel() -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            port = await pods.hello()
            async with await spdy_tunnel(url()) as client:
                got = await asyncio.gather(
                    *(forward(client, port, i, f"req{i}".encode()) for i in range(3))
                )
                assert got == [(f"hello req{i}".encode(), b"") for i in range(3)]
                payload = bytes(range(256)) * 4096  # 1 MiB
                assert await forward(client, port, 5, payload) == (b"hello " + payload, b"")
                with refused_port() as closed:
                    reply, message = await forward(client, closed, 7, b"x")
                assert reply == b""
                text = message.decode()
                assert text.startswith(f"error forwarding port {closed} to pod pod1, uid : ")
                await client.ping()  # SPDY pings are echoed through the tunnel too

    arun(test)


def test_spdy_tunnel_http_get() -> None:
    async def test() -> None:
        async with setup() as (url, pods):
            port = await pods.http("pod")
            async with await spdy_tunnel(url()) as client:
                reply, message = await forward(client, port, 0, GET)
            assert (reply, message) == (b"HTTP/1.0 200 OK\r\n\r\npod got GET / HTTP/1.0", b"")

    arun(test)


# --- end to end: crispyd, a pod, busybox httpd --------------------------------------------

HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.mark.root
def test_websocket_port_forward_to_httpd_in_pod(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", HTTPD]),
    )

    def port_forward() -> str:
        request = pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])
        url = str(pods.runtime.PortForward(request, timeout=10).url)
        assert urlsplit(url).hostname == "127.0.0.1", url
        return url

    async def test() -> None:
        deadline = time.monotonic() + 10
        while True:  # httpd may still be starting; every attempt needs a fresh URL
            client, count = await portforward_channels(port_forward(), [8080])
            async with client:
                await client.send_channel(0, GET, count=count)
                got = await client.collect(count=count)
            if got[0]:
                break
            assert b"refused" in got[1], got
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
        assert got[0].startswith(b"HTTP/1.") and got[0].endswith(b"hello\n"), got
        assert got[1] == b""

    arun(test, 30)
