"""CRI Attach end to end over SPDY/3.1: the shim copies the container's output to each attach
client and feeds its stdin from them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import container_config, new_pod, run, wait_exit
from support.exec_client import ExecStreams
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

TICKER = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]


def attach_url(cri: CriClient, cid: str, **kw: bool) -> str:
    return str(cri.runtime.Attach(pb.AttachRequest(container_id=cid, **kw), timeout=10).url)


def start(cri: CriClient, image: str, tmp_path: Path, **kw: object) -> str:
    pod_id, pod_cfg = new_pod(cri, tmp_path / "logs")
    return run(cri, pod_id, pod_cfg, container_config(image, **kw))  # type: ignore[arg-type]


async def read_until(s: ExecStreams, pattern: bytes, limit: float = 10) -> bytes:
    seen = b""
    async with asyncio.timeout(limit):
        while pattern not in seen:
            chunk = await s.streams["stdout"].read()
            assert chunk, f"EOF before {pattern!r}: {seen!r}"
            seen += chunk
    return seen


def test_two_attach_clients_see_the_same_output(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=TICKER)

    async def test() -> None:
        a = await ExecStreams.open(attach_url(pods, cid, stdout=True, stderr=True))
        b = await ExecStreams.open(attach_url(pods, cid, stdout=True, stderr=True))
        seen_a = await read_until(a, b"\n", 10)
        seen_b = await read_until(b, b"\n", 10)
        # Both copies carry the same ticks from the point both were attached.
        later_a = await read_until(a, b"tick", 10)
        last = int(re.findall(rb"tick (\d+)", seen_a + later_a)[-1]) + 3
        all_a = seen_a + later_a + await read_until(a, f"tick {last}\n".encode())
        all_b = seen_b + await read_until(b, f"tick {last}\n".encode())
        ticks_a = set(re.findall(rb"tick \d+", all_a))
        ticks_b = set(re.findall(rb"tick \d+", all_b))
        assert f"tick {last}".encode() in ticks_a & ticks_b
        assert len(ticks_a & ticks_b) >= 3
        await a.client.close()
        await b.client.close()

    asyncio.run(test())
    pods.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)


def test_attach_stdin_to_cat(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> None:
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=["cat"], stdin=True)

    async def test() -> None:
        s = await ExecStreams.open(
            attach_url(pods, cid, stdin=True, stdout=True, stderr=True), stdin=True
        )
        await s.write_stdin(b"first\n")
        assert await read_until(s, b"first\n") == b"first\n"
        await s.client.close()  # detach: without stdin_once the container's stdin stays
        s = await ExecStreams.open(
            attach_url(pods, cid, stdin=True, stdout=True, stderr=True), stdin=True
        )
        await s.write_stdin(b"second\n")
        assert await read_until(s, b"second\n") == b"second\n"
        await s.client.close()

    asyncio.run(test())


def test_attach_stdin_once_ends_the_container(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    cid = start(
        pods,
        pod_images.busybox.reference,
        tmp_path,
        command=["sh", "-c", "cat; echo done"],
        stdin=True,
        stdin_once=True,
    )

    async def test() -> None:
        s = await ExecStreams.open(
            attach_url(pods, cid, stdin=True, stdout=True, stderr=True), stdin=True
        )
        await s.write_stdin(b"only\n")
        await s.close_stdin()
        out = await s.collect()
        assert out.stdout == b"only\ndone\n"
        assert out.status()["status"] == "Success"

    asyncio.run(test())
    assert wait_exit(pods, cid).exit_code == 0


def test_attach_tty_with_resize(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> None:
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=["sh"], stdin=True, tty=True)

    async def test() -> None:
        s = await ExecStreams.open(
            attach_url(pods, cid, stdin=True, stdout=True, tty=True),
            stdin=True,
            stderr=False,
            tty=True,
        )
        await s.resize(101, 33)
        await asyncio.sleep(0.2)
        await s.write_stdin(b"stty size\n")
        await read_until(s, b"33 101")
        await s.write_stdin(b"exit 0\n")
        out = await s.collect()
        assert out.status()["status"] == "Success"

    asyncio.run(test())
    wait_exit(pods, cid)
