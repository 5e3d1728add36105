"""crispy-shim with real processes: detaching, the socket protocol, reaping orphans."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crispy.oci.shim_client import (
    SHIM_MAIN,
    ShimClient,
    ShimError,
    ShimProcess,
    ShimUnavailable,
    is_alive,
    start_shim,
)
from crispy.shim import main as shim_main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the shim is Linux-only")


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def proc_stat(pid: int) -> tuple[str, int, int]:
    """(state, ppid, session) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])


def is_gone(pid: int) -> bool:
    try:
        return proc_stat(pid)[0] in ("Z", "X")  # a zombie is gone as far as we care
    except FileNotFoundError:
        return True


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Shims:
    """Starts shims under one directory and makes sure none outlives the test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ShimProcess] = []

    def start(self, name: str = "shim", pod_id: str = "pod-1") -> tuple[ShimProcess, ShimClient]:
        shim = run(start_shim(pod_id, str(self.base / f"{name}.sock"), self.log(name)))
        self.started.append(shim)
        return shim, ShimClient(shim.socket, timeout=5.0)

    def log(self, name: str = "shim") -> str:
        return str(self.base / f"{name}.log")

    def cleanup(self) -> None:
        for shim in self.started:
            if is_gone(shim.pid):
                continue
            with contextlib.suppress(ShimError):
                run(ShimClient(shim.socket, timeout=2.0).shutdown())
            if not wait_until(functools.partial(is_gone, shim.pid), 2.0):
                kill_quietly(shim.pid)


@pytest.fixture
def shims(tmp_path: Path) -> Iterator[Shims]:
    assert len(str(tmp_path / "shim.sock")) < 100, "unix socket paths are capped at 107 bytes"
    s = Shims(tmp_path)
    yield s
    s.cleanup()


@pytest.fixture
def shim(shims: Shims) -> tuple[ShimProcess, ShimClient]:
    return shims.start()


# --- starting and detaching ------------------------------------------------------------------


def test_starts_quickly_and_answers_health(shims: Shims) -> None:
    t0 = time.perf_counter()
    proc, client = shims.start(pod_id="pod-abc")
    elapsed = time.perf_counter() - t0
    print(f"\nshim spawn-to-ready: {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0
    health = run(client.health())
    assert health["pod_id"] == "pod-abc"
    assert health["pid"] == proc.pid
    assert health["version"] == 1
    assert abs(health["started_at"] - time.time_ns()) < 60 * 10**9
    assert run(is_alive(proc.socket))
    assert (os.stat(proc.socket).st_mode & 0o777) == 0o600


def test_is_detached_from_its_spawner(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, _ = shim
    _, ppid, session = proc_stat(proc.pid)
    assert ppid != os.getpid()
    assert session != os.getsid(0)
    assert session == proc.pid  # a session of its own, led by itself
    assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"


def test_survives_the_death_of_its_spawner(shims: Shims) -> None:
    sock = str(shims.base / "orphan.sock")
    script = (
        "import asyncio, sys, time\n"
        "from crispy.oci.shim_client import start_shim\n"
        f"p = asyncio.run(start_shim('pod-o', {sock!r}, {shims.log('orphan')!r}))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    spawner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert spawner.stdout is not None
        pid = int(spawner.stdout.readline())
        shims.started.append(ShimProcess(pid, sock))
        os.killpg(spawner.pid, signal.SIGHUP)  # what a dying session would send its group
        os.killpg(spawner.pid, signal.SIGKILL)
        spawner.wait(5)
    finally:
        kill_quietly(spawner.pid)
        spawner.wait(5)
    time.sleep(0.1)
    assert not is_gone(pid)
    health = run(ShimClient(sock).health())
    assert health["pid"] == pid and health["pod_id"] == "pod-o"


def test_a_stale_socket_file_is_replaced(shims: Shims) -> None:
    path = shims.base / "shim.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed shim leaves
    proc, client = shims.start()
    assert run(client.health())["pid"] == proc.pid


def test_a_live_shims_socket_is_not_taken(shims: Shims) -> None:
    first, client = shims.start()
    with pytest.raises(ShimError, match="in use"):
        shims.start()
    assert run(client.health())["pid"] == first.pid


def test_a_socket_path_longer_than_sun_path_works(shims: Shims) -> None:
    deep = shims.base / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = str(deep / "shim.sock")
    assert len(sock) > 108
    proc = run(start_shim("pod-long", sock, shims.log()))
    shims.started.append(proc)
    client = ShimClient(sock)
    assert run(client.health())["pid"] == proc.pid
    run(client.shutdown())
    assert not os.path.exists(sock)


def test_binding_in_a_missing_directory_fails_with_the_reason(shims: Shims) -> None:
    sock = str(shims.base / "no" / "such" / "dir" / "shim.sock")
    with pytest.raises(ShimError, match="No such file or directory") as info:
        run(start_shim("pod-x", sock, shims.log()))
    assert sock in str(info.value)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert shim_main.main(["--version"]) == 0  # as the crispy-shim console script runs it
    assert capsys.readouterr().out.startswith("crispy-shim")
    out = subprocess.run(
        [sys.executable, "-I", "-S", SHIM_MAIN, "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("crispy-shim")


def test_the_shim_loads_only_the_standard_library_and_its_own_modules() -> None:
    # As start_shim launches it: its directory first on sys.path, `import main`.
    shim_dir = os.path.dirname(SHIM_MAIN)
    code = (
        f"import sys; sys.path.insert(0, {shim_dir!r}); import main; "
        "print(' '.join(sorted(m.split('.')[0] for m in sys.modules "
        "if m.split('.')[0] not in {*sys.stdlib_module_names, '__main__'})))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    own = {"main", "loop", "containers", "streams", "crilog", "runtime_argv"}
    assert set(out.stdout.split()) == own


# --- run -------------------------------------------------------------------------------------


def test_run_returns_output_and_returncode(shim: tuple[ShimProcess, ShimClient]) -> None:
    _, client = shim
    code, out, err = run(client.run(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert (code, out, err) == (3, "out\n", "err\n")
    assert run(client.run(["true"])) == (0, "", "")


def test_run_honours_env_cwd_and_stdin(
    shim: tuple[ShimProcess, ShimClient], tmp_path: Path
) -> None:
    _, client = shim
    env = {"FOO": "bar baz", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    code, out, _ = run(
        client.run(
            ["sh", "-c", 'echo "$FOO"; pwd; cat; echo "${HOME:-unset}"'],
            env=env,
            cwd=str(tmp_path),
            stdin="from stdin\n",
        )
    )
    assert code == 0
    assert out.splitlines() == ["bar baz", str(tmp_path), "from stdin", "unset"]


def test_run_kills_a_command_that_times_out(shim: tuple[ShimProcess, ShimClient]) -> None:
    _, client = shim
    t0 = time.monotonic()
    with pytest.raises(ShimError, match="timed out") as info:
        run(client.run(["sleep", "30"], timeout=0.3))
    assert time.monotonic() - t0 < 5
    assert info.value.reply is not None
    assert is_gone(info.value.reply["pid"])
    assert run(client.exits()) == {}  # a run command's status never lands in `exits`


def test_run_of_a_missing_program_or_dir_fails(
    shim: tuple[ShimProcess, ShimClient], tmp_path: Path
) -> None:
    _, client = shim
    with pytest.raises(ShimError, match=r"no-such-program.*No such file"):
        run(client.run(["no-such-program"]))
    with pytest.raises(ShimError, match="chdir"):
        run(client.run(["true"], cwd=str(tmp_path / "missing")))
    with pytest.raises(ShimError, match="argv"):
        run(client.call("run", argv=[]))
    assert run(client.exits()) == {}


def test_run_with_stdio_null_and_large_output(shim: tuple[ShimProcess, ShimClient]) -> None:
    _, client = shim
    assert run(client.run(["sh", "-c", "echo out; echo err >&2"], stdio="null")) == (0, "", "")
    code, out, _ = run(client.run(["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' a"]))
    assert (code, len(out), set(out)) == (0, 1000000, {"a"})
    assert run(client.run(["wc", "-c"], stdin="x" * 300000))[1].strip() == "300000"


def test_run_does_not_wait_for_what_the_command_left_running(
    shim: tuple[ShimProcess, ShimClient],
) -> None:
    _, client = shim
    t0 = time.monotonic()
    code, out, _ = run(client.run(["sh", "-c", "sleep 3 & echo $!"]))
    assert code == 0
    assert time.monotonic() - t0 < 2  # the sleep still holds stdout; `run` does not wait
    kill_quietly(int(out))


# --- orphans ---------------------------------------------------------------------------------


def test_an_orphan_is_reaped_into_exits(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, client = shim
    _, out, _ = run(client.run(["sh", "-c", "(sleep 0.3; exit 7) >/dev/null 2>&1 & echo $!"]))
    pid = int(out)
    assert proc_stat(pid)[1] == proc.pid  # reparented to the shim, the subreaper
    record = run(client.wait(pid, timeout=5))
    assert (record["pid"], record["exit_code"], record["signal"]) == (pid, 7, 0)
    assert abs(record["finished_at"] - time.time_ns()) < 10 * 10**9
    exits = run(client.exits())
    assert exits[pid]["exit_code"] == 7
    assert run(client.wait(pid, timeout=0))["exit_code"] == 7  # still there until forgotten
    assert run(client.forget(pid))
    assert pid not in run(client.exits())
    assert not run(client.forget(pid))


def test_an_orphan_killed_by_a_signal_records_it(shim: tuple[ShimProcess, ShimClient]) -> None:
    _, client = shim
    _, out, _ = run(client.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]))
    pid = int(out)
    os.kill(pid, signal.SIGTERM)
    record = run(client.wait(pid, timeout=5))
    assert (record["signal"], record["exit_code"]) == (signal.SIGTERM, 128 + signal.SIGTERM)


def test_wait_times_out(shim: tuple[ShimProcess, ShimClient]) -> None:
    _, client = shim
    _, out, _ = run(client.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]))
    pid = int(out)
    t0 = time.monotonic()
    with pytest.raises(ShimError, match="timeout"):
        run(client.wait(pid, timeout=0.2))
    assert 0.15 < time.monotonic() - t0 < 3
    os.kill(pid, signal.SIGKILL)
    assert run(client.wait(pid, timeout=5))["signal"] == signal.SIGKILL


# --- the protocol ----------------------------------------------------------------------------


def test_bad_requests_leave_the_connection_usable(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, _ = shim
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(proc.socket)
        f = s.makefile("rwb")

        def ask(line: bytes) -> dict[str, Any]:
            f.write(line + b"\n")
            f.flush()
            return json.loads(f.readline())

        reply = ask(b"this is not json")
        assert reply["ok"] is False and "JSON" in reply["error"]
        reply = ask(b'{"op": "frobnicate"}')
        assert reply["ok"] is False and "unknown op 'frobnicate'" in reply["error"]
        assert ask(b"[1, 2]")["ok"] is False
        assert ask(b'{"op": "wait", "pid": "x"}')["ok"] is False
        assert ask(b"\xff\xfe")["ok"] is False
        assert ask(b'{"op": "health"}')["pid"] == proc.pid
        # Several requests in one write are answered in order, one line each.
        f.write(b'{"op":"health"}\n{"op":"bogus"}\n{"op":"exits"}\n')
        f.flush()
        replies = [json.loads(f.readline()) for _ in range(3)]
        assert [r["ok"] for r in replies] == [True, False, True]
        assert replies[2]["exits"] == {}


def test_a_client_leaving_mid_request_does_not_disturb_the_shim(
    shim: tuple[ShimProcess, ShimClient],
) -> None:
    proc, client = shim
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(proc.socket)
        s.sendall(b'{"op": "run", "argv": ["sh", "-c", "sleep 0.2; echo $$"]}\n')
        s.sendall(b'{"op": "wait", "pid": 1, "timeout": 0.1}\n')
    time.sleep(0.4)  # the run has finished and the wait has expired, with nobody to tell
    assert run(client.health())["pid"] == proc.pid
    assert run(client.exits()) == {}  # the run's status went to nobody, not into `exits`


def test_a_last_request_without_newline_is_answered(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, _ = shim
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(proc.socket)
        s.sendall(b'{"op": "health"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(s.makefile("rb").readline())["pid"] == proc.pid


def test_concurrent_calls_on_several_connections(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, client = shim

    async def scenario() -> None:
        slow = asyncio.create_task(client.run(["sh", "-c", "sleep 0.5; echo slow"]))
        waiting = asyncio.create_task(client.call("wait", pid=1, timeout=0.6))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        healths = await asyncio.gather(*(client.health() for _ in range(20)))
        assert time.monotonic() - t0 < 0.4  # not stuck behind the pending run and wait
        assert {h["pid"] for h in healths} == {proc.pid}
        runs = await asyncio.gather(*(client.run(["echo", str(i)]) for i in range(10)))
        assert [r[1] for r in runs] == [f"{i}\n" for i in range(10)]
        assert await slow == (0, "slow\n", "")
        with pytest.raises(ShimError, match="timeout"):
            await waiting

    run(scenario())


# --- stopping --------------------------------------------------------------------------------


def test_shutdown_exits_and_removes_the_socket(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, client = shim
    run(client.shutdown())
    assert not os.path.exists(proc.socket)  # already gone when shutdown() returns
    assert wait_until(lambda: is_gone(proc.pid), 3)
    assert not run(is_alive(proc.socket))
    with pytest.raises(ShimUnavailable):
        run(client.health())


def test_sigterm_exits_and_removes_the_socket(shim: tuple[ShimProcess, ShimClient]) -> None:
    proc, _ = shim
    os.kill(proc.pid, signal.SIGTERM)
    assert wait_until(lambda: is_gone(proc.pid), 3)
    assert wait_until(lambda: not os.path.exists(proc.socket), 1)


def test_a_new_shim_can_take_the_socket_right_after_shutdown(shims: Shims) -> None:
    first, client = shims.start()
    run(client.shutdown())
    second, client = shims.start()
    assert run(client.health())["pid"] == second.pid != first.pid
