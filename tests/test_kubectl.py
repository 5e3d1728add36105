"""kubectl (client-go's real transports) against crispyd's streaming server.

kubectl talks to a stand-in API server (tests/support/kubeapi.py) that splices its upgrade
straight onto the URL crispyd handed out, as the API server and kubelet would. kubectl
1.30+ uses WebSocket (v5.channel.k8s.io) for exec and attach, and SPDY/3.1 tunnelled in
WebSocket for port-forward; the env switches force the SPDY fallbacks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import container_config, new_pod, run
from support.kubeapi import KubeAPI
from support.registry_fixtures import TestImages

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]

HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"
SPDY_ONLY = {
    "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
    "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false",
}


def kubectl(
    config: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(config), "--request-timeout", "20s", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(config.parent), **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_exec_and_attach(
    pods: CriClient, pod_images: TestImages, tmp_path: Path, transport: str
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    image = pod_images.busybox.reference
    sleeper = run(pods, pod_id, pod_cfg, container_config(image, command=["sleep", "3600"]))
    cat = run(pods, pod_id, pod_cfg, container_config(image, command=["cat"], stdin=True))
    env = SPDY_ONLY if transport == "spdy" else {}

    def exec_url(cmd: list[str], stdin: bool = False) -> str:
        req = pb.ExecRequest(container_id=sleeper, cmd=cmd, stdin=stdin, stdout=True, stderr=True)
        return str(pods.runtime.Exec(req, timeout=10).url)

    with KubeAPI() as api:
        config = api.kubeconfig(tmp_path / "kubeconfig")
        api.urls.append(exec_url(["sh", "-c", "echo out; echo err >&2"]))
        done = kubectl(config, "exec", "box", "-c", "c", "--", "sh", "-c", "x", env=env)
        assert done.returncode == 0, done.stderr
        assert (done.stdout, done.stderr) == (b"out\n", b"err\n")

        api.urls.append(exec_url(["sh", "-c", "exit 3"]))
        done = kubectl(config, "exec", "box", "--", "x", env=env)
        assert done.returncode == 3, done.stderr

        api.urls.append(exec_url(["cat"], stdin=True))
        data = b"piped through kubectl\n" * 1000
        done = kubectl(config, "exec", "-i", "box", "--", "x", stdin=data, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == data

        req = pb.AttachRequest(container_id=cat, stdin=True, stdout=True, stderr=True)
        api.urls.append(str(pods.runtime.Attach(req, timeout=10).url))
        proc = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(config), "attach", "-i", "box", "-c", "c"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"attached\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"attached\n"
        finally:
            proc.kill()
            proc.wait(10)
        assert any("/exec?" in line for line in api.seen)
        want = "websocket" if transport == "websocket" else "SPDY/3.1"
        assert api.upgrades and all(u.lower() == want.lower() for u in api.upgrades), api.upgrades


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_port_forward(
    pods: CriClient, pod_images: TestImages, tmp_path: Path, transport: str
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    httpd = container_config(pod_images.busybox.reference, command=["sh", "-c", HTTPD])
    run(pods, pod_id, pod_cfg, httpd)
    env = SPDY_ONLY if transport == "spdy" else {}
    local = free_port()
    with KubeAPI() as api:
        config = api.kubeconfig(tmp_path / "kubeconfig")
        req = pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080])
        api.urls.append(str(pods.runtime.PortForward(req, timeout=10).url))
        proc = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(config), "port-forward", "box", f"{local}:8080"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        )
        try:
            deadline = time.monotonic() + 20
            body = b""
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5) as r:
                        body = r.read()
                    break
                except OSError:
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "port-forward never answered"
                    time.sleep(0.2)
            assert body == b"hello\n"
            # a second connection over the same session
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5) as r:
                assert r.read() == b"hello\n"
            want = "websocket" if transport == "websocket" else "SPDY/3.1"
            assert [u.lower() for u in api.upgrades] == [want.lower()]
        finally:
            proc.kill()
            proc.wait(10)
