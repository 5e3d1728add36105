"""CRI PortForward end to end: crispyd's streaming server, SPDY/3.1, a busybox httpd in a pod.

Traffic goes only to the daemon's loopback streaming server and into the test pod's netns.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import container_config, new_pod, run
from support.portforward_client import forward, request, spdy
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"
GET = b"GET / HTTP/1.0\r\n\r\n"


def port_forward(cri: CriClient, pod_id: str) -> str:
    return str(
        cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id), timeout=10).url
    )


def test_port_forward_to_httpd_in_pod(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", HTTPD]),
    )
    url = port_forward(pods, pod_id)
    u = urlsplit(url)
    assert u.scheme == "http" and u.hostname == "127.0.0.1"
    assert u.path.startswith("/portforward/")

    async def test() -> None:
        async with await spdy(url) as client:
            # httpd may still be starting: retry on the same session with new request ids
            deadline = time.monotonic() + 10
            rid = 100
            while True:
                reply, message = await forward(client, 8080, rid, GET)
                if reply:
                    break
                assert "refused" in message.decode(), message
                assert time.monotonic() < deadline, message
                rid += 1
                await asyncio.sleep(0.2)
            assert reply.startswith(b"HTTP/1.") and reply.endswith(b"hello\n"), reply

            reply, message = await forward(client, 8080, 0, GET)
            assert message == b"" and reply.endswith(b"hello\n")
            both = await asyncio.gather(
                forward(client, 8080, 1, GET), forward(client, 8080, 2, GET)
            )
            assert all(m == b"" and r.endswith(b"hello\n") for r, m in both), both

            reply, message = await forward(client, 9, 3, b"x")
            assert reply == b""
            text = message.decode()
            assert text.startswith(f"error forwarding port 9 to pod {pod_id}, uid : "), text

        # the token was used up; an unknown one was never valid
        for bad in (url, url.rsplit("/", 1)[0] + "/unknown"):
            head, _, writer = await request(bad)
            assert head.startswith("HTTP/1.1 404 "), head
            writer.close()

    asyncio.run(asyncio.wait_for(test(), 30))


def test_port_forward_unknown_pod(pods: CriClient) -> None:
    with pytest.raises(grpc.RpcError) as e:
        port_forward(pods, "f" * 64)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_port_forward_stopped_pod(pods: CriClient, tmp_path: Path) -> None:
    pod_id, _ = new_pod(pods, tmp_path / "logs")
    pods.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        port_forward(pods, pod_id)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
