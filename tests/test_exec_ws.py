"""Exec and attach over WebSocket (RFC 6455), every channel protocol once, with aiohttp's
client (tests/support/ws_client.py) as kubectl's and crictl's websocket transports use them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.streaming import channels
from support.containers import container_config, new_pod, run
from support.registry_fixtures import TestImages
from support.ws_client import WsClient

pytestmark = pytest.mark.root

N = channels.EXEC_CHANNELS


def exec_url(cri: CriClient, cid: str, cmd: list[str], **kw: bool) -> str:
    return str(cri.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=cmd, **kw), timeout=10).url)


@pytest.fixture
def sleeper(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> str:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    cfg = container_config(pod_images.busybox.reference, command=["sleep", "3600"])
    return run(pods, pod_id, pod_cfg, cfg)


@pytest.mark.parametrize(
    "protocol",
    [
        channels.V5_CHANNEL,
        channels.V5_BASE64_CHANNEL,
        channels.V4_CHANNEL,
        channels.V4_BASE64_CHANNEL,
        channels.V3_CHANNEL,
        channels.V2_CHANNEL,
        channels.CHANNEL,
        channels.BASE64_CHANNEL,
        "",
    ],
)
def test_exec_over_websocket(pods: CriClient, sleeper: str, protocol: str) -> None:
    cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    url = exec_url(pods, sleeper, cmd, stdout=True, stderr=True).replace("http://", "ws://")

    async def test() -> None:
        async with await WsClient.connect(url, [protocol] if protocol else []) as ws:
            assert ws.protocol == protocol
            got = await ws.collect(count=N)
        assert got[channels.STDOUT] == b"out\n"
        assert got[channels.STDERR] == b"err\n"
        if protocol in (channels.V4_CHANNEL, channels.V4_BASE64_CHANNEL) or protocol.startswith(
            "v5."
        ):
            st = json.loads(got[channels.ERROR])
            assert st["reason"] == "NonZeroExitCode"
            assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
        else:
            assert got[channels.ERROR].endswith(b"exit code 3"), got[channels.ERROR]

    asyncio.run(test())


def test_websocket_v5_stdin_close_signal_ends_cat(pods: CriClient, sleeper: str) -> None:
    url = exec_url(pods, sleeper, ["cat"], stdin=True, stdout=True).replace("http:", "ws:")

    async def test() -> None:
        async with await WsClient.connect(url, [channels.V5_CHANNEL]) as ws:
            await ws.send_channel(channels.STDIN, b"a" * 100_000, count=N)
            await ws.send_channel(channels.STDIN, b"end\n", count=N)
            await ws.ws.send_bytes(channels.close_signal(channels.STDIN))
            got = await ws.collect(count=N)
        assert got[channels.STDOUT] == b"a" * 100_000 + b"end\n"
        assert json.loads(got[channels.ERROR])["status"] == "Success"

    asyncio.run(test())


def test_websocket_tty_resize(pods: CriClient, sleeper: str) -> None:
    url = exec_url(
        pods, sleeper, ["sh", "-c", "read x; stty size"], stdin=True, stdout=True, tty=True
    ).replace("http:", "ws:")

    async def test() -> None:
        async with await WsClient.connect(url, [channels.V4_BASE64_CHANNEL]) as ws:
            for bad in (b"not json", b'{"Width": 0, "Height": 5}', b"[1, 2]"):
                await ws.send_channel(channels.RESIZE, bad, count=N)  # ignored, not fatal
            size = json.dumps({"Width": 77, "Height": 22}).encode()
            await ws.send_channel(channels.RESIZE, size, count=N)
            await asyncio.sleep(0.2)
            await ws.send_channel(channels.STDIN, b"go\n", count=N)
            got = await ws.collect(count=N)
        assert b"22 77" in got[channels.STDOUT], got
        assert json.loads(got[channels.ERROR])["status"] == "Success"

    asyncio.run(test())


def test_attach_over_websocket(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    cfg = container_config(pod_images.busybox.reference, command=["cat"], stdin=True)
    cid = run(pods, pod_id, pod_cfg, cfg)
    url = str(
        pods.runtime.Attach(
            pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True), timeout=10
        ).url
    ).replace("http:", "ws:")

    async def test() -> None:
        async with await WsClient.connect(url, [channels.V5_CHANNEL]) as ws:
            await ws.send_channel(channels.STDIN, b"echo me\n", count=N)
            seen = b""
            while b"echo me\n" not in seen:
                got = await ws.receive_channel(count=N)
                assert got is not None
                if got[0] == channels.STDOUT:
                    seen += got[1]
        assert seen == b"echo me\n"

    asyncio.run(test())
