"""The shim supervising real containers (runc, crun): stdio, CRI logs, exits, exec_sync.

Bundles are made by hand: a busybox rootfs shared read-only by all containers, and a small
config.json per container (no network namespace, a cgroup under /crispytest/). The pure
parts (the CRI log format, OOM counters, signal names) are tested first, without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crispy.oci.shim_client import ShimClient, ShimError, ShimProcess, start_shim
from crispy.shim import containers as shim_containers
from crispy.shim import crilog

T = TypeVar("T")

RECORD = re.compile(
    rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([PF]) (.*)$",
    re.DOTALL,
)
CGROUP_ROOT = "/sys/fs/cgroup"
STAMP = b"2016-10-06T00:17:09.669794202Z"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def parse(data: bytes) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of each record; every line must be a well-formed record."""
    out = []
    for line in data.split(b"\n")[:-1]:
        m = RECORD.match(line)
        assert m, f"not a CRI log record: {line[:200]!r}"
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    assert data.endswith(b"\n") or not data
    return out


def records(path: Path) -> list[tuple[str, str, bytes]]:
    return parse(path.read_bytes()) if path.exists() else []


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is gone
    except FileNotFoundError:
        return True


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# --- the CRI log format (no root needed) -----------------------------------------------------


def test_full_lines_become_f_records_and_a_cr_before_the_newline_goes() -> None:
    s = crilog.Stream("stdout")
    out = s.feed(b"one\ntwo\r\n\nthr", STAMP)
    assert parse(out) == [("stdout", "F", b"one"), ("stdout", "F", b"two"), ("stdout", "F", b"")]
    assert out.startswith(STAMP + b" stdout F one\n")
    assert parse(s.feed(b"ee\n", STAMP)) == [("stdout", "F", b"three")]
    # Only a \r that ends the line goes; one inside it (a progress bar) is content.
    assert parse(s.feed(b"10%\r20%\r\n" + b"x" * 20000 + b"\r\n", STAMP)) == [
        ("stdout", "F", b"10%\r20%"),
        ("stdout", "P", b"x" * 16384),
        ("stdout", "F", b"x" * (20000 - 16384)),
    ]
    assert s.feed(b"", STAMP) == b""
    assert s.finish(STAMP) == b""


def test_long_lines_are_cut_into_p_records_at_16k() -> None:
    k16 = crilog.MAX_LINE
    assert k16 == 16384
    s = crilog.Stream("stderr")
    assert parse(s.feed(b"a" * k16 + b"\n", STAMP)) == [("stderr", "F", b"a" * k16)]
    assert parse(s.feed(b"b" * (k16 + 1) + b"\n", STAMP)) == [
        ("stderr", "P", b"b" * k16),
        ("stderr", "F", b"b"),
    ]
    # Fed in small pieces: P records go out as soon as more than a line has come.
    out = b"".join(s.feed(b"c" * 1000, STAMP) for _ in range(40))
    assert parse(out) == [("stderr", "P", b"c" * k16)] * 2
    assert parse(s.feed(b"\n", STAMP)) == [("stderr", "F", b"c" * (40000 - 2 * k16))]
    # A \r\n split across reads at the 16K boundary is still one line end.
    assert s.feed(b"d" * k16 + b"\r", STAMP) == b""
    assert parse(s.feed(b"\n", STAMP)) == [("stderr", "F", b"d" * k16)]


def test_what_is_left_at_the_end_of_the_stream_is_a_p_record() -> None:
    # As containerd's CRI logger: a line that never ended is partial, there is no F for it.
    s = crilog.Stream("stdout")
    assert parse(s.feed(b"done\nno newline", STAMP)) == [("stdout", "F", b"done")]
    assert parse(s.finish(STAMP)) == [("stdout", "P", b"no newline")]
    assert s.finish(STAMP) == b""


def test_timestamps_are_rfc3339_nano_in_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = 1475712829 * 10**9 + 669794202  # 2016-10-06T00:13:49.669794202Z
    try:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        assert crilog.Timestamps().format(ns) == b"2016-10-06T00:13:49.669794202Z"
        assert crilog.Timestamps().format(ns - 669794202 + 5) == b"2016-10-06T00:13:49.000000005Z"
        monkeypatch.setenv("TZ", "Europe/Berlin")
        time.tzset()
        assert crilog.Timestamps().format(ns) == b"2016-10-06T02:13:49.669794202+02:00"
        monkeypatch.setenv("TZ", "America/St_Johns")
        time.tzset()
        assert crilog.Timestamps().format(ns) == b"2016-10-05T21:43:49.669794202-02:30"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_log_file_is_created_appended_reopened_and_survives_write_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pods" / "ns_pod_uid" / "ctr" / "0.log"
    f = crilog.LogFile(str(path))
    assert (path.stat().st_mode & 0o777) == 0o640
    f.write(b"one\n")
    path.rename(path.with_suffix(".log.1"))
    f.write(b"two\n")  # still the renamed file until reopened
    f.reopen()
    f.write(b"three\n")
    f.close()
    assert path.with_suffix(".log.1").read_bytes() == b"one\ntwo\n"
    assert path.read_bytes() == b"three\n"

    reports: list[str] = []
    full = crilog.LogFile("/dev/full", report=reports.append)
    full.write(b"x" * 100)
    full.write(b"y" * 100)
    assert full.dropped == 200 and len(reports) == 1 and "No space" in reports[0]
    full.close()


def test_log_file_follows_no_symlink_below_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "pods" / "p", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep\n")
    f = crilog.LogFile(str(root / "c" / "0.log"), root=str(root))  # root and c made
    f.write(b"ok\n")
    f.close()
    assert (root / "c" / "0.log").read_bytes() == b"ok\n"
    (root / "ln.log").symlink_to(outside / "victim")
    (root / "dir").symlink_to(outside)
    os.mkfifo(root / "fifo.log")
    for name in ("ln.log", "dir/victim", "dir/new.log", "fifo.log"):
        with pytest.raises(OSError):
            crilog.LogFile(str(root / name), root=str(root))
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "keep\n"
    for path, r in (
        (f"{root}/../outside/victim", str(root)),
        (f"{outside}/victim", str(root)),
        (f"{root}/a\0b", str(root)),
        (str(root), str(root)),
        ("rel.log", ""),
    ):
        with pytest.raises(ValueError):
            crilog.LogFile(path, root=r)
    # rotation: reopen after the file was renamed and a symlink put in its place
    f = crilog.LogFile(str(root / "c" / "0.log"), root=str(root))
    (root / "c" / "0.log").rename(root / "c" / "0.log.1")
    (root / "c" / "0.log").symlink_to(outside / "victim")
    with pytest.raises(OSError):
        f.reopen()
    f.write(b"still\n")  # the old file stays in use
    f.close()
    assert (root / "c" / "0.log.1").read_bytes() == b"ok\nstill\n"
    assert (outside / "victim").read_text() == "keep\n"


def test_oom_counters_and_signals(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 1\noom_kill 3\n")
    assert shim_containers.read_oom(str(v1)) == (3, True)
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert shim_containers.read_oom(str(v2)) == (2, False)
    assert shim_containers.read_oom(str(tmp_path / "missing")) is None

    for value in (9, "9", "KILL", "SIGKILL", "kill"):
        assert shim_containers.get_signal({"signal": value}) == signal.SIGKILL
    assert shim_containers.get_signal({"signal": 37}) == 37  # SIGRTMIN+3: real-time ones too
    assert shim_containers.get_signal({"signal": "64"}) == 64
    for bad in (None, "NOPE", 0, True, 1000, 65, "0", -9):
        with pytest.raises(shim_containers.BadRequest):
            shim_containers.get_signal({"signal": bad})


# --- real containers -------------------------------------------------------------------------

needs_runc = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None or not os.path.exists("/bin/busybox"),
    reason="needs root, runc and a static /bin/busybox",
)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem, shared read-only by every container of the module."""
    root = tmp_path_factory.mktemp("rootfs")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shutil.copy2("/bin/busybox", bin_dir / "busybox")
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir()
    return root


class Env:
    """One shim, bundles made on demand, and everything they left cleaned up after."""

    def __init__(self, base: Path, rootfs: Path) -> None:
        self.base = base
        self.rootfs = rootfs
        self.tag = uuid.uuid4().hex[:8]
        self.runtime_roots: dict[str, Path] = {}
        self.created: list[tuple[list[str], str]] = []  # (runtime argv, id) to force-delete
        self.shim: ShimProcess = run(
            start_shim("pod-test", str(base / "shim.sock"), str(base / "shim.log"))
        )
        self.client = ShimClient(self.shim.socket, timeout=10.0)

    def runtime(self, name: str = "runc") -> list[str]:
        root = self.base / f"{name}-root"
        self.runtime_roots[name] = root
        if name == "crun":
            return ["crun", "--cgroup-manager=cgroupfs", "--root", str(root)]
        return [name, "--root", str(root)]

    def cgroup(self, cid: str) -> str:
        return f"/crispytest/{self.tag}/{cid}"

    def bundle(
        self,
        cid: str,
        args: list[str],
        tty: bool = False,
        memory: int | None = None,
    ) -> Path:
        bundle = self.base / cid
        bundle.mkdir()
        resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
        if memory is not None:
            resources["memory"] = {"limit": memory}
        caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": tty,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.rootfs), "readonly": True},
            "hostname": "crispytest",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {
                    "destination": "/dev",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
                },
                {
                    "destination": "/dev/pts",
                    "type": "devpts",
                    "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
                },
                {
                    "destination": "/tmp",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777"],
                },
            ],
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                "cgroupsPath": self.cgroup(cid),
                "resources": resources,
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
            },
        }
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def create(
        self,
        cid: str,
        args: list[str],
        *,
        runtime: str = "runc",
        tty: bool = False,
        stdin: bool = False,
        memory: int | None = None,
        log: bool = True,
        start: bool = True,
    ) -> int:
        bundle = self.bundle(cid, args, tty=tty, memory=memory)
        argv = self.runtime(runtime)
        self.created.append((argv, cid))
        oom_file = f"{CGROUP_ROOT}/memory{self.cgroup(cid)}/memory.oom_control"
        pid = run(
            self.client.create(
                cid,
                str(bundle),
                argv,
                exit_file=str(bundle / "exit.json"),
                log_path=str(self.log(cid)) if log else "",
                stdin=stdin,
                tty=tty,
                oom_file=oom_file,
            )
        )
        if start:
            run(self.client.start(cid))
        return pid

    def log(self, cid: str) -> Path:
        return self.base / "logs" / cid / "0.log"

    def wait(self, cid: str, timeout: float = 10.0) -> dict[str, Any]:
        return run(self.client.wait_container(cid, timeout))

    def exit_file(self, cid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.base / cid / "exit.json").read_text())
        return data

    def cleanup(self) -> None:
        for argv, cid in self.created:
            subprocess.run([*argv, "delete", "--force", cid], capture_output=True, check=False)
        with contextlib.suppress(ShimError):
            run(ShimClient(self.shim.socket, timeout=2.0).shutdown())
        if not wait_until(lambda: is_gone(self.shim.pid), 2.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.shim.pid, signal.SIGKILL)
        for controller in os.listdir(CGROUP_ROOT):
            top = Path(CGROUP_ROOT, controller, "crispytest")
            for d in (top / self.tag, top):  # the top one only when nobody else uses it
                if d.is_dir():
                    for sub in sorted(d.glob("*/"), reverse=True):
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                    with contextlib.suppress(OSError):
                        d.rmdir()


@pytest.fixture
def env(tmp_path: Path, rootfs: Path) -> Iterator[Env]:
    e = Env(tmp_path, rootfs)
    try:
        yield e
    finally:
        e.cleanup()


root = pytest.mark.root


@root
@needs_runc
def test_output_goes_to_the_cri_log_and_the_exit_is_recorded(env: Env) -> None:
    script = "echo out1; sleep 0.05; echo err1 >&2; sleep 0.05; echo out2; exit 3"
    pid = env.create("c1", ["sh", "-c", script], start=False)
    listing = run(env.client.containers())["c1"]
    assert (listing["pid"], listing["status"], listing["running"]) == (pid, "created", True)
    run(env.client.start("c1"))
    record = env.wait("c1")
    assert (record["pid"], record["exit_code"], record["signal"]) == (pid, 3, 0)
    assert record["oom_killed"] is False
    assert abs(record["finished_at"] - time.time_ns()) < 10 * 10**9
    assert records(env.log("c1")) == [
        ("stdout", "F", b"out1"),
        ("stderr", "F", b"err1"),
        ("stdout", "F", b"out2"),
    ]
    assert (env.log("c1").stat().st_mode & 0o777) == 0o640
    exit_file = env.exit_file("c1")
    assert exit_file == {k: v for k, v in record.items() if k not in ("ok", "id")}
    assert sorted(os.listdir(env.base / "c1")) == ["config.json", "exit.json", "pid", "runtime.log"]
    listing = run(env.client.containers())["c1"]
    assert (listing["running"], listing["status"], listing["exit"]) == (False, "exited", exit_file)
    assert listing["started_at"] > listing["created_at"] > 0
    run(env.client.delete("c1"))
    assert run(env.client.containers()) == {}
    with pytest.raises(ShimError, match="no container 'c1'"):
        run(env.client.delete("c1"))


@root
@needs_runc
def test_a_40k_line_is_split_into_p_records_and_a_line_cut_by_eof_stays_partial(
    env: Env,
) -> None:
    script = "head -c 40960 /dev/zero | tr '\\0' a; echo; printf 'no newline'"
    env.create("long", ["sh", "-c", script])
    assert env.wait("long")["exit_code"] == 0
    assert records(env.log("long")) == [
        ("stdout", "P", b"a" * 16384),
        ("stdout", "P", b"a" * 16384),
        ("stdout", "F", b"a" * 8192),
        ("stdout", "P", b"no newline"),
    ]


@root
@needs_runc
def test_a_tty_container_logs_its_terminal_and_reads_stdin_from_it(env: Env) -> None:
    env.create("tty", ["sh", "-c", "tty; [ -t 1 ] && echo is a tty"], tty=True)
    assert env.wait("tty")["exit_code"] == 0
    assert records(env.log("tty")) == [("stdout", "F", b"/dev/pts/0"), ("stdout", "F", b"is a tty")]

    env.create(
        "ttyin", ["sh", "-c", 'read x; echo "got $x"; read y || echo eof'], tty=True, stdin=True
    )
    run(env.client.write_stdin("ttyin", b"hello\n"))
    assert wait_until(lambda: ("stdout", "F", b"got hello") in records(env.log("ttyin")))
    run(env.client.write_stdin("ttyin", b"", close=True))  # ^D on a terminal
    assert env.wait("ttyin")["exit_code"] == 0
    logged = records(env.log("ttyin"))
    assert ("stdout", "F", b"hello") in logged  # the terminal's echo
    assert logged[-1] == ("stdout", "F", b"eof")


@root
@needs_runc
def test_stdin_reaches_the_container_and_closing_it_ends_cat(env: Env) -> None:
    env.create("cat", ["cat"], stdin=True, start=False)
    run(env.client.write_stdin("cat", b"queued before start\n"))
    run(env.client.start("cat"))
    run(env.client.write_stdin("cat", b"hello\nwor"))
    run(env.client.write_stdin("cat", b"ld\n", close=True))
    assert env.wait("cat")["exit_code"] == 0
    assert records(env.log("cat")) == [
        ("stdout", "F", b"queued before start"),
        ("stdout", "F", b"hello"),
        ("stdout", "F", b"world"),
    ]
    with pytest.raises(ShimError, match="stdin"):
        run(env.client.write_stdin("cat", b"more"))
    env.create("nostdin", ["true"])
    with pytest.raises(ShimError, match="without stdin"):
        run(env.client.write_stdin("nostdin", b"x"))


@root
@needs_runc
def test_nothing_of_the_shim_leaks_into_a_container(env: Env) -> None:
    env.create("ls", ["ls", "/proc/self/fd"])
    assert env.wait("ls")["exit_code"] == 0
    # 0-2, and the directory ls has open to list itself
    assert [r[2] for r in records(env.log("ls"))] == [b"0", b"1", b"2", b"3"]

    def comm(pid: int) -> str:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()

    pid = env.create("sleeper", ["sleep", "30"], stdin=True)
    assert wait_until(lambda: comm(pid) == "sleep")  # runc init has exec'd it
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert sorted(fds) == ["0", "1", "2"]
    assert all(target.startswith("pipe:") for target in fds.values())
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == env.shim.pid  # the shim's child
    tty_pid = env.create("ttysleeper", ["sleep", "30"], tty=True)
    assert wait_until(lambda: comm(tty_pid) == "sleep")
    assert sorted(os.listdir(f"/proc/{tty_pid}/fd")) == ["0", "1", "2"]
    assert os.readlink(f"/proc/{tty_pid}/fd/1") == "/dev/pts/0"


@root
@needs_runc
def test_kill_records_the_signal(env: Env) -> None:
    pid = env.create("victim", ["sleep", "100"])
    with pytest.raises(ShimError, match="is running, not created"):
        run(env.client.start("victim"))
    with pytest.raises(ShimError):  # runc refuses to delete a running container
        run(env.client.delete("victim"))

    async def wait_by_pid_then_kill() -> dict[str, Any]:
        # Waiting on the init's pid is waiting for the container's exit record.
        waiting = asyncio.create_task(env.client.wait(pid, timeout=10))
        await asyncio.sleep(0.1)
        await env.client.kill("victim", "KILL")
        record = await waiting
        assert (env.base / "victim" / "exit.json").exists()
        return record

    record = run(wait_by_pid_then_kill())
    assert (record["pid"], record["exit_code"], record["signal"]) == (pid, 137, 9)
    assert env.wait("victim") == record
    assert (record["exit_code"], record["signal"], record["oom_killed"]) == (137, 9, False)
    assert env.exit_file("victim")["exit_code"] == 137
    run(env.client.delete("victim"))

    env.create("forced", ["sleep", "100"])
    run(env.client.delete("forced", force=True))  # kills it; the shim forgets it
    assert "forced" not in run(env.client.containers())
    with pytest.raises(ShimError, match="no container"):
        run(env.client.kill("forced", signal.SIGTERM))


@root
@needs_runc
def test_a_container_over_its_memory_limit_is_oom_killed(env: Env) -> None:
    script = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"
    env.create("oom", ["sh", "-c", script], memory=8 << 20)
    record = env.wait("oom", timeout=20)
    assert record["oom_killed"] is True, record
    assert env.exit_file("oom")["oom_killed"] is True
    assert ("stdout", "F", b"survived") not in records(env.log("oom"))


@root
@needs_runc
def test_exec_sync(env: Env) -> None:
    env.create("box", ["sleep", "100"])
    c = env.client

    def process(script: str) -> dict[str, Any]:
        return {"args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"]}

    assert run(c.exec_sync("box", process("echo out; echo err >&2; exit 5"), timeout=10)) == (
        5,
        b"out\n",
        b"err\n",
        False,
    )
    binary = process("printf '\\000\\377\\n'")
    assert run(c.exec_sync("box", binary, timeout=10))[1] == b"\x00\xff\n"

    code, out, _, _ = run(c.exec_sync("box", process("head -c 100000 /dev/zero"), max_output=1000))
    assert (code, out) == (0, b"\0" * 1000)

    t0 = time.monotonic()
    code, out, _, timed_out = run(c.exec_sync("box", process("echo started; sleep 100"), 0.5))
    assert (code, out, timed_out) == (-1, b"started\n", True)
    assert time.monotonic() - t0 < 2.5

    t0 = time.monotonic()
    code, out, _, timed_out = run(c.exec_sync("box", process("sleep 100 & echo bg"), 10))
    assert (code, out, timed_out) == (0, b"bg\n", False)
    assert time.monotonic() - t0 < 2.5  # the background sleep holds stdout; not waited for

    _, ps, _, _ = run(c.exec_sync("box", process("ps -o pid,args"), 10))
    assert ps.count(b"sleep 100") == 2  # init and the background one; the timed-out one died

    with pytest.raises(ShimError, match="no-such-binary"):
        run(c.exec_sync("box", {"args": ["no-such-binary"], "cwd": "/", "env": ["PATH=/bin"]}))

    async def concurrently() -> None:
        slow = asyncio.create_task(c.exec_sync("box", process("sleep 0.5; echo slow"), 10))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await c.containers()
        assert time.monotonic() - t0 < 0.3  # not stuck behind the exec
        assert (await slow)[1] == b"slow\n"

    run(concurrently())
    assert not [p for p in os.listdir(env.base / "box") if p.startswith("exec-")]


@root
@needs_runc
def test_reopen_log_moves_new_lines_to_a_new_file(env: Env) -> None:
    env.create("rot", ["sh", "-c", 'read a; echo "$a"; read b; echo "$b"'], stdin=True)
    run(env.client.write_stdin("rot", b"first\n"))
    log = env.log("rot")
    assert wait_until(lambda: records(log) == [("stdout", "F", b"first")])
    log.rename(log.with_suffix(".log.20240101"))
    run(env.client.reopen_log("rot"))
    run(env.client.write_stdin("rot", b"second\n", close=True))
    assert env.wait("rot")["exit_code"] == 0
    assert records(log.with_suffix(".log.20240101")) == [("stdout", "F", b"first")]
    assert records(log) == [("stdout", "F", b"second")]


@root
@needs_runc
def test_create_failures_leave_nothing_behind(env: Env) -> None:
    def shim_fds() -> list[str]:  # but the sockets of the client connections
        fd_dir = f"/proc/{env.shim.pid}/fd"
        links = {fd: os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)}
        return sorted(f"{fd} {link}" for fd, link in links.items() if "socket" not in link)

    run(env.client.health())  # it is serving: the ready pipe it was started with is closed
    fds_before = shim_fds()
    with pytest.raises(ShimError, match="no-such-binary"):
        env.create("bad", ["/bin/no-such-binary"])
    with pytest.raises(ShimError, match="no-such-binary"):
        env.create("badtty", ["/bin/no-such-binary"], tty=True)
    assert run(env.client.containers()) == {}
    assert shim_fds() == fds_before
    env.create("dup", ["true"], start=False)
    with pytest.raises(ShimError, match="exists"):
        run(
            env.client.create(
                "dup", str(env.base / "dup"), env.runtime(), exit_file=str(env.base / "x")
            )
        )
    with pytest.raises(ShimError, match="bundle"):
        run(env.client.create("rel", "relative/bundle", env.runtime(), exit_file="x"))


@root
@needs_runc
@pytest.mark.skipif(shutil.which("crun") is None, reason="needs crun")
def test_crun_works_as_the_runtime(env: Env) -> None:
    t0 = time.perf_counter()
    env.create("crun1", ["sh", "-c", "echo from crun; echo oops >&2; exit 7"], runtime="crun")
    print(f"\ncrun create+start via the shim: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert env.wait("crun1")["exit_code"] == 7
    assert records(env.log("crun1")) == [("stdout", "F", b"from crun"), ("stderr", "F", b"oops")]
    env.create("crun2", ["sleep", "100"], runtime="crun")
    exec_process = {"args": ["sh", "-c", "echo in crun; exit 2"], "cwd": "/", "env": ["PATH=/bin"]}
    assert run(env.client.exec_sync("crun2", exec_process, 10)) == (2, b"in crun\n", b"", False)
    run(env.client.kill("crun2", "KILL"))  # TERM: sleep is pid 1 and ignores it
    assert env.wait("crun2")["signal"] == signal.SIGKILL
    run(env.client.delete("crun2"))


@root
@needs_runc
def test_five_containers_in_one_shim(env: Env) -> None:
    def rss_kib() -> int:
        with open(f"/proc/{env.shim.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    idle = rss_kib()
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        env.create(f"many{i}", ["sh", "-c", f"echo container {i}; exec sleep 30"])
        times.append(time.perf_counter() - t0)
        if i == 0:
            one = rss_kib()
    five = rss_kib()
    print(
        f"\nrunc create+start via the shim: {', '.join(f'{t * 1000:.0f}' for t in times)} ms;"
        f" shim RSS: idle {idle} KiB, 1 container {one} KiB, 5 containers {five} KiB"
    )
    assert five < 64 * 1024
    listing = run(env.client.containers())
    assert {cid for cid, c in listing.items() if c["status"] == "running"} == {
        f"many{i}" for i in range(5)
    }
    for i in range(5):
        log = env.log(f"many{i}")
        assert wait_until(lambda: records(log) != [])  # noqa: B023 (used at once)
        assert records(log) == [("stdout", "F", f"container {i}".encode())]
        run(env.client.kill(f"many{i}", signal.SIGKILL, all=True))
    for i in range(5):
        assert env.wait(f"many{i}")["signal"] == signal.SIGKILL


# --- streaming exec and attach: descriptors over the shim socket -------------------------------


def shim_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int) -> int:
    """The shim's fd count once it stopped changing (an answered connection may linger)."""
    last = shim_fds(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = shim_fds(pid)
        if now == last:
            return now
        last = now
    return last


@root
@needs_runc
def test_stream_exec_with_our_pipes_and_its_exit(env: Env) -> None:
    env.create("box", ["sleep", "100"])
    c = env.client
    before = settled_fds(env.shim.pid)
    process = {"args": ["sh", "-c", "cat; echo err >&2; exit 4"], "cwd": "/", "env": ["PATH=/bin"]}
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid, master = run(c.exec("box", process, [in_r, out_w, err_w]))
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    assert master is None and pid > 0
    os.write(in_w, b"through the shim's runtime exec\n")
    os.close(in_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        assert out.read() == b"through the shim's runtime exec\n"
        assert err.read() == b"err\n"
    record = run(c.call("wait", pid=pid, timeout=10, forget=True))
    assert record["exit_code"] == 4
    assert pid not in run(c.exits())  # forgotten as it was answered
    assert run(c.signal(pid, signal.SIGKILL)) is False  # reaped: never signalled again
    assert wait_until(lambda: shim_fds(env.shim.pid) == before)


@root
@needs_runc
def test_stream_exec_with_a_terminal_comes_back_with_its_master(env: Env) -> None:
    env.create("box", ["sleep", "100"])
    process = {
        "args": ["sh", "-c", "stty size; read line; echo got $line"],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "terminal": True,
        "consoleSize": {"height": 20, "width": 60},
    }
    pid, master = run(env.client.exec("box", process, []))
    assert master is not None
    os.write(master, b"typed\n")
    seen = b""
    deadline = time.monotonic() + 10
    # Read to the end (EIO once the shell has gone): closing the master while the shell
    # still runs would hang it up (exit 129).
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert b"20 60" in seen and b"got typed" in seen, seen
    assert run(env.client.wait(pid, 10))["exit_code"] == 0


@root
@needs_runc
def test_stream_requests_with_wrong_descriptors_leak_nothing(env: Env) -> None:
    env.create("box", ["sleep", "100"])
    c = env.client
    before = settled_fds(env.shim.pid)
    process = {"args": ["true"], "cwd": "/", "env": ["PATH=/bin"]}
    r, w = os.pipe()
    try:
        with pytest.raises(ShimError, match="expected 3 file descriptors"):
            run(c.call_fds("exec", [r, w], id="box", process=process))
        with pytest.raises(ShimError, match="no container"):
            run(c.call_fds("attach", [w], id="nope", stdout=True))
        with pytest.raises(ShimError, match="expected 1 file descriptors"):
            run(c.call_fds("attach", [r, w], id="box", stdout=True))
        with pytest.raises(ShimError, match="has no terminal"):
            run(c.resize("box", 80, 24))
    finally:
        os.close(r)
        os.close(w)
    assert wait_until(lambda: shim_fds(env.shim.pid) == before)
    assert run(c.health())["ok"]


@root
@needs_runc
def test_attach_fans_output_out_and_drops_a_client_that_never_reads(env: Env) -> None:
    env.create("cat", ["cat"], stdin=True)
    c = env.client
    readers = []
    for _ in range(2):
        r, w = os.pipe()
        run(c.attach("cat", stdout=w))
        os.close(w)
        readers.append(r)
    stuck_r, stuck_w = os.pipe()  # attached, never read: dropped past its buffer limit
    run(c.attach("cat", stdout=stuck_w))
    os.close(stuck_w)
    in_r, in_w = os.pipe()
    run(c.attach("cat", stdin=in_r))
    os.close(in_r)
    chunk = b"x" * 65535 + b"\n"
    total = 6 << 20  # more than the shim queues for the stuck client

    async def pump() -> list[int]:
        loop = asyncio.get_running_loop()

        def drain(fd: int) -> int:
            n = 0
            while data := os.read(fd, 1 << 20):
                n += len(data)
                if n >= total:
                    break
            return n

        tasks = [loop.run_in_executor(None, drain, fd) for fd in readers]
        sent = 0
        while sent < total:
            await loop.run_in_executor(None, os.write, in_w, chunk)
            sent += len(chunk)
        return list(await asyncio.gather(*tasks))

    assert run(pump()) == [total, total]
    # the stuck client got EOF after what fit in its buffer
    with os.fdopen(stuck_r, "rb") as stuck:
        assert len(stuck.read()) < total
    os.close(in_w)  # not stdin_once: the container's stdin stays open
    run(c.write_stdin("cat", b"", close=True))
    assert env.wait("cat")["exit_code"] == 0
    for fd in readers:
        assert os.read(fd, 10) == b""  # the output ended with the container's
        os.close(fd)
