"""`crispy port-forward`: the real binary, one SPDY session to crispyd, busybox httpd in a pod.

Listens and connects on loopback only.
"""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from crispy.cli.client import CriClient
from crispy.cli.portforward import parse_mapping
from support.containers import container_config, new_pod, run
from support.daemon import Crispyd, crispy_bin
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"
FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$")


def lines(stream: IO[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return q


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


def test_parse_mapping() -> None:
    assert parse_mapping("8080") == (8080, 8080)
    assert parse_mapping(":80") == (0, 80)
    assert parse_mapping("0:80") == (0, 80)
    assert parse_mapping("9000:80") == (9000, 80)


def test_cli_port_forward(
    pods: CriClient, pod_crispyd: Crispyd, pod_images: TestImages, tmp_path: Path
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", HTTPD]),
    )
    args = ["-r", pod_crispyd.endpoint, "port-forward", pod_id[:12], "0:8080", ":9"]
    proc = subprocess.Popen(
        [crispy_bin("crispy"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = lines(proc.stdout), lines(proc.stderr)
        local: dict[int, int] = {}
        for _ in range(2):
            try:
                line = out.get(timeout=10)
            except queue.Empty:
                pytest.fail(f"no Forwarding line; exit {proc.poll()}")
            m = FORWARDING.match(line)
            assert m, line
            local[int(m[2])] = int(m[1])
        assert set(local) == {8080, 9} and 0 not in local.values()

        # httpd may still be starting; each attempt is a new stream pair on the session
        deadline = time.monotonic() + 10
        while not (reply := get(local[8080])):
            assert time.monotonic() < deadline, "httpd never answered"
            time.sleep(0.2)
        assert reply.startswith(b"HTTP/1.") and reply.endswith(b"hello\n"), reply
        while not err.empty():  # refusals while httpd started
            err.get()

        assert get(local[8080]).endswith(b"hello\n")
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(get, [local[8080]] * 2))
        assert all(r.endswith(b"hello\n") for r in both), both

        assert get(local[9]) == b""
        message = err.get(timeout=5)
        assert "port-forward to 9" in message and f"error forwarding port 9 to pod {pod_id}" in (
            message
        ), message
        assert proc.poll() is None
        assert get(local[8080]).endswith(b"hello\n")  # the session survived

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
