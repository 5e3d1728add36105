"""`crispy exec` (streamed) and `crispy attach`: the real binary against the real daemon, over
both transports; terminals are ptys made here. The streaming server is on 127.0.0.1."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.cli.terminal import exit_status
from crispy.streaming import remote
from support.containers import container_config, new_pod, run, stop, wait_exit, wait_state
from support.daemon import Crispyd, crispy_bin, crispy_cli
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

SLEEP = ["sh", "-c", "exec sleep 3600"]
TRANSPORTS = ["spdy", "websocket"]


def test_exit_status_of_runtime_errors() -> None:
    assert exit_status(3, "") == 3
    assert exit_status(0, "") == 0
    assert exit_status(-1, 'exec: "nope": executable file not found in $PATH') == 127
    assert exit_status(-1, "open /x: no such file or directory") == 127
    assert exit_status(-1, "exec /etc/passwd: permission denied") == 126
    assert exit_status(-1, "container is not running") == 1


@pytest.fixture
def sleeper(pods: CriClient, pod_images: TestImages, tmp_path: Path) -> str:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    cid = run(pods, pod_id, pod_cfg, container_config(pod_images.busybox.reference, command=SLEEP))
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    return cid


def start(pods: CriClient, image: str, tmp_path: Path, **kw: object) -> str:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    cid = run(pods, pod_id, pod_cfg, container_config(image, **kw))  # type: ignore[arg-type]
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    return cid


def crispy_bytes(
    ep: str, *args: str, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [crispy_bin("crispy"), "-r", ep, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


# -- exec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_output_exit_code_and_stdin(
    pod_crispyd: Crispyd, sleeper: str, transport: str
) -> None:
    ep = pod_crispyd.endpoint
    t = ["--transport", transport]
    r = crispy_cli(ep, "exec", *t, sleeper[:10], "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", "")

    r = crispy_cli(ep, "exec", *t, sleeper, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")

    # -i: our stdin is the command's, and its EOF ends cat
    data = os.urandom(3 << 20)
    rb = crispy_bytes(ep, "exec", "-i", *t, sleeper, "cat", input=data)
    assert rb.returncode == 0, rb.stderr
    assert rb.stdout == data

    rb = crispy_bytes(ep, "exec", "-i", *t, sleeper, "--", "sh", "-c", "wc -c; exit 4", input=b"")
    assert (rb.returncode, rb.stdout.strip()) == (4, b"0")

    # without -i the command has no stdin at all
    r = crispy_cli(ep, "exec", *t, sleeper, "sh", "-c", "cat; echo end")
    assert (r.returncode, r.stdout) == (0, "end\n")


def test_exec_errors(pod_crispyd: Crispyd, sleeper: str) -> None:
    ep = pod_crispyd.endpoint
    r = crispy_cli(ep, "exec", sleeper, "/no/such/command")
    assert r.returncode == 127, (r.returncode, r.stderr)

    r = crispy_cli(ep, "exec", "nosuchcontainer", "true")
    assert r.returncode == 1 and "container nosuchcontainer not found" in r.stderr

    r = crispy_cli(ep, "exec", "--sync", "-t", sleeper, "true")
    assert r.returncode == 2 and "--sync" in r.stderr
    r = crispy_cli(ep, "exec", sleeper)
    assert r.returncode == 2 and "command" in r.stderr
    # --sync is ExecSync as before
    r = crispy_cli(ep, "exec", "--sync", "--timeout", "5", sleeper, "sh", "-c", "echo s; exit 2")
    assert (r.returncode, r.stdout) == (2, "s\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_run_100mb_through_cat(pods: CriClient, sleeper: str, transport: str) -> None:
    """The library's run(): stdin is streamed while stdout is read, at a useful speed."""
    data = hashlib.sha256(b"crispy").digest() * (100 * 1024 * 1024 // 32)
    req = pb.ExecRequest(container_id=sleeper, cmd=["cat"], stdin=True, stdout=True)
    url = pods.runtime.Exec(req, timeout=10).url
    start = time.monotonic()
    result = asyncio.run(remote.run(url, stdin=data, stderr=False, transport=transport))
    took = time.monotonic() - start
    assert (result.exit_code, result.error) == (0, "")
    assert len(result.stdout) == len(data) and result.stdout == data
    assert took < 60, took


# -- terminals -------------------------------------------------------------------------------


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Pty:
    """`crispy` with a pty as its stdin, stdout and stderr; we hold the master side."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        set_size(self.slave, rows, cols)
        self.original = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True
        )
        self.output = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, pattern: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.output!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: every slave descriptor is closed
                    chunk = b""
                if not chunk:
                    assert pattern in self.output, f"EOF before {pattern!r}: {self.output!r}"
                self.output += chunk
        return self.output

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; output {self.output!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                with_data = os.read(self.master, 65536)
                self.output += with_data
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def ptys() -> Iterator[list[Pty]]:
    made: list[Pty] = []
    yield made
    for p in made:
        p.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_tty_gets_our_terminal_size(
    pod_crispyd: Crispyd, sleeper: str, ptys: list[Pty], transport: str
) -> None:
    argv = [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "exec", "-t"]
    argv += ["--transport", transport, sleeper, "sh", "-c", "sleep 0.5; stty size; exit 6"]
    p = Pty(argv, rows=37, cols=111)
    ptys.append(p)
    assert p.wait() == 6
    assert b"37 111" in p.output, p.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_interactive_tty_raw_resize_and_restore(
    pod_crispyd: Crispyd, sleeper: str, ptys: list[Pty], transport: str
) -> None:
    argv = [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "exec", "-it"]
    argv += ["--transport", transport, sleeper, "sh"]
    p = Pty(argv, rows=20, cols=70)
    ptys.append(p)
    time.sleep(0.5)  # the initial size reaches the shell before it is asked
    p.write(b"stty size\r")
    p.read_until(b"20 70")
    assert termios.tcgetattr(p.slave) != p.original  # raw while the session runs

    set_size(p.slave, 44, 132)
    p.proc.send_signal(signal.SIGWINCH)
    time.sleep(0.5)
    p.write(b"stty size; exit 9\r")
    p.read_until(b"44 132")
    assert p.wait() == 9
    assert termios.tcgetattr(p.slave) == p.original  # restored on the way out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_tty_restores_terminal_when_terminated(
    pod_crispyd: Crispyd, sleeper: str, ptys: list[Pty], transport: str
) -> None:
    argv = [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "exec", "-it"]
    argv += ["--transport", transport, sleeper, "sh"]
    p = Pty(argv, rows=24, cols=80)
    ptys.append(p)
    p.write(b"echo rea''dy\r")  # the echo of what we type is not what we wait for
    p.read_until(b"ready\r\n")
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM
    assert termios.tcgetattr(p.slave) == p.original


# -- attach ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_sees_the_output_until_the_container_ends(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path, transport: str
) -> None:
    script = "sleep 1; for i in 1 2 3 4 5; do echo line $i; echo oops $i >&2; sleep 0.1; done"
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=["sh", "-c", script])
    r = crispy_cli(pod_crispyd.endpoint, "attach", "--transport", transport, cid[:12])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("line 4\nline 5\n"), r.stdout
    assert r.stderr.endswith("oops 5\n"), r.stderr
    assert wait_exit(pods, cid).exit_code == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_stdin_once_to_cat(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path, transport: str
) -> None:
    cid = start(
        pods,
        pod_images.busybox.reference,
        tmp_path,
        command=["sh", "-c", "cat; echo done"],
        stdin=True,
        stdin_once=True,
    )
    r = crispy_bytes(
        pod_crispyd.endpoint, "attach", "-i", "--transport", transport, cid, input=b"only\n"
    )
    assert (r.returncode, r.stdout) == (0, b"only\ndone\n"), r.stderr
    assert wait_exit(pods, cid).exit_code == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_interactive_cat_then_terminate(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path, transport: str
) -> None:
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=["cat"], stdin=True)
    argv = ["-r", pod_crispyd.endpoint, "attach", "-i", "--transport", transport, cid]
    proc = subprocess.Popen(
        [crispy_bin("crispy"), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping\n"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - signalled < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # detaching left the container running (no stdin_once)
    assert wait_state(pods, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
    stop(pods, cid)


def test_attach_tty(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path, ptys: list[Pty]
) -> None:
    cid = start(pods, pod_images.busybox.reference, tmp_path, command=["sh"], stdin=True, tty=True)
    argv = [crispy_bin("crispy"), "-r", pod_crispyd.endpoint, "attach", "-it", cid]
    p = Pty(argv, rows=31, cols=97)
    ptys.append(p)
    time.sleep(0.5)
    p.write(b"stty size\r")
    p.read_until(b"31 97")
    p.write(b"exit 0\r")
    assert p.wait() == 0
    assert termios.tcgetattr(p.slave) == p.original
    assert wait_exit(pods, cid).exit_code == 0
