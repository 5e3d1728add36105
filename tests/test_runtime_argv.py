"""The OCI runtime driver's command lines: one builder (crispy/shim/runtime_argv.py) for
the shim and crispyd, the handler's prefix, the runtime log's last error, and a check that
no other module spells a runtime subcommand's flags."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from crispy.oci.runtime import NSENTER, OciRuntime
from crispy.shim import runtime_argv
from crispy.shim.runtime_argv import RuntimeArgv, last_error

SRC = Path(__file__).resolve().parent.parent / "src" / "crispy"
BUILDER = SRC / "shim" / "runtime_argv.py"


def test_every_subcommand() -> None:
    cmd = RuntimeArgv(["/usr/sbin/runc", "--root", "/run/r"], "/b/runtime.log")
    log = ["/usr/sbin/runc", "--root", "/run/r", "--log", "/b/runtime.log", "--log-format", "json"]
    assert cmd.create("c1", "/b", "/b/pid") == [
        *log, "create", "--bundle", "/b", "--pid-file", "/b/pid", "c1"
    ]  # fmt: skip
    assert cmd.create("c1", "/b", "/b/pid", "/b/console.sock")[-3:] == [
        "--console-socket",
        "/b/console.sock",
        "c1",
    ]
    assert cmd.start("c1") == [*log, "start", "c1"]
    assert cmd.kill("c1", 9) == [*log, "kill", "c1", "9"]
    assert cmd.kill("c1", "KILL", all=True) == [*log, "kill", "--all", "c1", "KILL"]
    assert cmd.delete("c1") == [*log, "delete", "c1"]
    assert cmd.delete("c1", force=True) == [*log, "delete", "--force", "c1"]
    assert cmd.exec("c1", "/b/p.json", "/b/p.pid") == [
        *log, "exec", "--detach", "--process", "/b/p.json", "--pid-file", "/b/p.pid", "c1"
    ]  # fmt: skip
    assert cmd.exec("c1", "/b/p.json", "/b/p.pid", "/s")[-3:] == ["--console-socket", "/s", "c1"]
    assert cmd.update("c1") == [*log, "update", "--resources", "-", "c1"]
    assert cmd.state("c1") == [*log, "state", "c1"]
    assert cmd.wait("c1") == [*log, "wait", "c1"]
    # no log file: no --log (the probes, and kill/delete from crispyd without a bundle)
    bare = RuntimeArgv(["/usr/sbin/runc"])
    assert bare.features() == ["/usr/sbin/runc", "features"]
    assert bare.version() == ["/usr/sbin/runc", "--version"]
    assert bare.last_error() == ""


def test_handler_prefix_and_log() -> None:
    runc = OciRuntime("runc", "/usr/sbin/runc", "/run/crispy/runc", options=["--systemd-cgroup"])
    assert runc.prefix("/run/netns/x") == [
        "/usr/sbin/runc",
        "--root",
        "/run/crispy/runc",
        "--systemd-cgroup",
    ]
    assert runc.argv(bundle="/b").log == "/b/runtime.log"
    assert runc.argv().log == ""
    runsc = OciRuntime("runsc", "/usr/bin/runsc", "/run/crispy/runsc", in_pod_netns=True)
    assert runsc.prefix("/run/netns/x")[:2] == [NSENTER, "--net=/run/netns/x"]
    assert runsc.prefix("") == ["/usr/bin/runsc", "--root", "/run/crispy/runsc"]


def test_last_error(tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    log.write_text(
        '{"level":"error","msg":"first","time":"t"}\n'
        '{"level":"fatal","msg":"the last one","time":"t"}\n'
        '{"level":"warning","msg":"not an error","time":"t"}\nnot json\n[1]\n'
    )
    assert last_error(str(log)) == "the last one"
    assert RuntimeArgv(["runc"], str(log)).last_error() == "the last one"
    assert last_error(str(tmp_path / "none")) == ""
    # only the tail of a long log is read; the error near its end is found
    big = tmp_path / "big.log"
    big.write_text("x" * (3 * runtime_argv.LOG_TAIL) + '\n{"level":"error","msg":"late"}\n')
    assert last_error(str(big)) == "late"


def test_run_direct_reports_exit_and_stderr() -> None:
    h = OciRuntime("sh", "/bin/sh", "/tmp")
    assert asyncio.run(h.run_direct(["/bin/sh", "-c", "echo oops >&2; exit 3"])) == (3, "oops")
    rc, err = asyncio.run(h.run_direct(["/bin/sh", "-c", "sleep 5"], timeout=0.2))
    assert rc == -1 and "timed out" in err
    rc, err = asyncio.run(h.run_direct(["/nonexistent/runtime"]))
    assert rc == -1 and "nonexistent" in err
    rc, err = asyncio.run(h.run_direct(["/bin/sh", "-c", "true", "a\0b"]))
    assert rc == -1  # a NUL in a recorded path is an error, not an exception


# Flags only an OCI runtime's command line has: a module that spells one builds an argv.
RUNTIME_FLAGS = {
    "--bundle",
    "--pid-file",
    "--console-socket",
    "--resources",
    "--log-format",
    "--process",
    "--detach",
}


def test_only_the_builder_spells_runtime_flags() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == BUILDER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUNTIME_FLAGS:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value}")
    assert found == [], "build runtime argv in crispy/shim/runtime_argv.py"
