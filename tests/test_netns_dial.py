"""Port-forward's dial into a pod's network namespace, and system.ns.run_in_netns under it.

Each test's netns is its own (`ip netns add crispytest-<rand>`); only loopback inside it is
ever connected to, by an echo server started in it with `ip netns exec`."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crispy.streaming.dial import dial_in_netns
from crispy.system.ns import run_in_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

# argv: host backlog accept(0/1). Echoes every connection in its own thread; prints the
# port it got once listening. With accept=0 it never accepts (to fill the backlog).
ECHO_SERVER = """
import socket, sys, threading
host, backlog, accept = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.bind((host, 0))
srv.listen(backlog)
print("READY", srv.getsockname()[1], flush=True)
def echo(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while accept:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
sys.stdin.read()
"""


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh netns with lo up; its name (its file is /run/netns/<name>)."""
    name = f"crispytest-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


@pytest.fixture
def serve(netns: str) -> Iterator[Callable[..., int]]:
    """Start an echo server inside `netns`; returns its port. Servers are killed after."""
    procs: list[subprocess.Popen[str]] = []

    def start(host: str = "127.0.0.1", backlog: int = 16, accept: bool = True) -> int:
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_SERVER]
        proc = subprocess.Popen(
            [*argv, host, str(backlog), "1" if accept else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["READY"], line
        return int(line[1])

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()


def netns_file(name: str) -> str:
    return f"/run/netns/{name}"


async def echo_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def test_dial_echoes_and_serves_concurrent_connections(
    netns: str, serve: Callable[..., int]
) -> None:
    port = serve()
    own_ns = os.readlink("/proc/thread-self/ns/net")

    async def main() -> None:
        r1, w1 = await dial_in_netns(netns_file(netns), port)
        r2, w2 = await dial_in_netns(netns_file(netns), port)
        try:
            assert w1.get_extra_info("peername")[:2] == ("127.0.0.1", port)
            got = await asyncio.gather(
                echo_once(r1, w1, b"hello " * 1000), echo_once(r2, w2, b"second\n")
            )
            assert got == [b"hello " * 1000, b"second\n"]
            assert await echo_once(r1, w1, b"again") == b"again"
        finally:
            await close(w1)
            await close(w2)

    asyncio.run(main())
    assert os.readlink("/proc/thread-self/ns/net") == own_ns


def test_dial_falls_back_to_ipv6_loopback(netns: str, serve: Callable[..., int]) -> None:
    port = serve("::1")

    async def main() -> None:
        r, w = await dial_in_netns(netns_file(netns), port)
        try:
            assert w.get_extra_info("peername")[:2] == ("::1", port)
            assert await echo_once(r, w, b"v6") == b"v6"
        finally:
            await close(w)

    asyncio.run(main())


def test_dial_refused_names_the_port(netns: str) -> None:
    # A fresh netns: nothing listens on any port of its loopback, v4 or v6.
    port = 1024 + secrets.randbelow(60000)
    with pytest.raises(ConnectionRefusedError, match=f"localhost:{port}$") as e:
        asyncio.run(dial_in_netns(netns_file(netns), port))
    assert e.value.errno == errno.ECONNREFUSED


def test_dial_times_out_naming_the_port(netns: str, serve: Callable[..., int]) -> None:
    # Never accepting with a full backlog: further SYNs are dropped, the connect hangs.
    port = serve(backlog=0, accept=False)

    async def main() -> None:
        held = []
        try:
            with pytest.raises(TimeoutError, match=f"localhost:{port} timed out"):
                for _ in range(4):
                    held.append(await dial_in_netns(netns_file(netns), port, timeout=0.3))
        finally:
            for _, w in held:
                await close(w)

    asyncio.run(main())


def test_host_network_dials_the_callers_own_namespace(
    netns: str, serve: Callable[..., int]
) -> None:
    """netns_path "" is the namespace crispyd runs in; run here from a thread that has
    joined the test's netns, so only that netns's loopback is used."""
    port = serve()

    async def main() -> bytes:
        r, w = await dial_in_netns("", port)
        try:
            return await echo_once(r, w, b"host")
        finally:
            await close(w)

    assert run_in_netns(netns_file(netns), lambda: asyncio.run(main())) == b"host"


def test_dial_into_a_missing_or_non_netns_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(dial_in_netns(str(tmp_path / "gone"), 80))
    (tmp_path / "net").write_bytes(b"")
    with pytest.raises(OSError, match="not a network namespace") as e:
        asyncio.run(dial_in_netns(str(tmp_path / "net"), 80))
    assert e.value.errno == errno.EINVAL


def test_run_in_netns_joins_only_a_fresh_thread(netns: str) -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    path = netns_file(netns)
    inside = run_in_netns(path, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
    assert inside == os.stat(path).st_ino != own
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    # A socket made in there stays in there: its loopback is the netns's, lo up, no server.
    s = run_in_netns(path, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with s:
        assert s.connect_ex(("127.0.0.1", 1)) == errno.ECONNREFUSED


def test_run_in_netns_hands_back_fn_errors(netns: str) -> None:
    def boom() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        run_in_netns(netns_file(netns), boom)
    assert run_in_netns(netns_file(netns), lambda: None) is None


def test_run_in_netns_missing_or_non_netns_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_in_netns(str(tmp_path / "gone"), lambda: 1)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError, match="not a network namespace") as e:
        run_in_netns(str(tmp_path / "file"), lambda: 1)
    assert e.value.errno == errno.EINVAL
    assert e.value.filename == str(tmp_path / "file")
