"""Runtimes the benchmarks start beside crispy: containerd 1.6's CRI plugin on temp dirs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

from crispy.api import pb
from crispy.cli.client import CriClient

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Where containerd 1.6's shims put their sockets (<RUN_DIR>/s), whatever the config says.
RUN_DIR = Path("/run/containerd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE = 24
    return False


def _toml_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Containerd:
    """containerd 1.6 with its CRI plugin, on temp dirs and a temp socket.

    With no options this is containerd's default CRI setup apart from its paths. The
    options are for benches that run pods: ``sandbox_image``, the CNI dirs, ``plain_http``
    registries (host:port, reached through an ``http://`` mirror) and ``private_runc`` (runc
    state and the opt plugin's dir under ``base`` rather than under /run and /opt).
    """

    CRI = '[plugins."io.containerd.grpc.v1.cri"'

    def __init__(
        self,
        base: Path,
        *,
        sandbox_image: str | None = None,
        cni_conf_dir: Path | None = None,
        cni_bin_dir: str | None = None,
        plain_http: tuple[str, ...] = (),
        private_runc: bool = False,
    ) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.runc_root = base / "runc" if private_runc else None
        base.mkdir(parents=True, exist_ok=True)
        cri = self.CRI
        lines = [
            "version = 2",
            f"root = {_toml_str(base / 'root')}",
            f"state = {_toml_str(base / 'state')}",
            f"[grpc]\n  address = {_toml_str(self.socket)}",
            f"[ttrpc]\n  address = {_toml_str(base / 'ttrpc.sock')}",
            f"{cri}]",
            f'  stream_server_port = "{free_port()}"',
        ]
        if not has_cap_sys_resource():
            # Without it runc can't lower the pause container's oom_score_adj (-998) and
            # fails with "can't get final child's PID from pipe"; containerd then clamps.
            lines.append("  restrict_oom_score_adj = true")
        if sandbox_image:
            lines.append(f"  sandbox_image = {_toml_str(sandbox_image)}")
        lines.append(f"{cri}.cni]")
        lines.append(f"  conf_dir = {_toml_str(cni_conf_dir or base / 'net.d')}")
        if cni_bin_dir:
            lines.append(f"  bin_dir = {_toml_str(cni_bin_dir)}")
        for host in plain_http:
            lines.append(f'{cri}.registry.mirrors."{host}"]')
            lines.append(f'  endpoint = ["http://{host}"]')
        if self.runc_root is not None:
            lines.append(f"{cri}.containerd.runtimes.runc]")
            lines.append('  runtime_type = "io.containerd.runc.v2"')
            lines.append(f"{cri}.containerd.runtimes.runc.options]")
            lines.append(f"  Root = {_toml_str(self.runc_root)}")
            lines.append('[plugins."io.containerd.internal.v1.opt"]')
            lines.append(f"  path = {_toml_str(base / 'opt')}")
        (base / "config.toml").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_dir_existed = RUN_DIR.exists()
        self._cgroup_parents = set(self._k8s_cgroups())

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        log = open(self.base / "containerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.base / "config.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        with CriClient(self.endpoint, timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    c.runtime.Version(pb.VersionRequest(), timeout=2)
                    return
                except Exception:
                    time.sleep(0.2)
        self.stop()
        raise RuntimeError((self.base / "containerd.log").read_text())

    @staticmethod
    def _k8s_cgroups() -> list[Path]:
        """The parent cgroups the CRI plugin makes for pods without a cgroup_parent (its
        namespace, k8s.io), in each v1 hierarchy and the v2 one."""
        return [p for p in (CGROUP_ROOT / "k8s.io", *CGROUP_ROOT.glob("*/k8s.io")) if p.is_dir()]

    def shim_pids(self, ids: Collection[str] | None = None) -> list[int]:
        """containerd-shim processes serving this containerd (their -address is our socket);
        with `ids`, only those of these sandboxes (their -id: a pod's shim is its sandbox's)."""
        pids = []
        sock = os.fsencode(self.socket)
        wanted = None if ids is None else {os.fsencode(i) for i in ids}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not (argv and os.path.basename(argv[0]).startswith(b"containerd-shim")):
                continue
            if sock not in argv:
                continue
            if wanted is not None:
                shim_id = argv[argv.index(b"-id") + 1] if b"-id" in argv[:-1] else None
                if shim_id not in wanted:
                    continue
            pids.append(int(entry.name))
        return pids

    def stop(self, grace: float = 5.0) -> list[str]:
        """SIGTERM containerd; then kill what it leaves behind: shims keep running when
        containerd exits (by design), and with them their containers. Says what it had to
        kill or delete, and which cgroups it made are still there."""
        leftovers: list[str] = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # A shim exits by itself shortly after its last task is deleted.
        deadline = time.monotonic() + grace
        while self.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.runc_root is not None and self.runc_root.is_dir():
            for ns_root in self.runc_root.iterdir():
                for state in ns_root.iterdir() if ns_root.is_dir() else ():
                    leftovers.append(f"runc container {state.name[:12]} left behind (deleted)")
                    subprocess.run(
                        ["runc", "--root", str(ns_root), "delete", "--force", state.name],
                        capture_output=True,
                        check=False,
                    )
        for pid in self.shim_pids():
            leftovers.append(f"containerd-shim {pid} still running (killed)")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for cg in self._k8s_cgroups():
            if cg not in self._cgroup_parents:
                try:
                    left = sorted(d.name[:12] for d in cg.iterdir() if d.is_dir())
                except OSError:
                    left = []
                if left:
                    leftovers.append(f"cgroups left in {cg}: {', '.join(left)}")
                with contextlib.suppress(OSError):  # still in use: not ours to take
                    cg.rmdir()
        if not self._run_dir_existed and RUN_DIR.is_dir():
            # Left empty by the shims; remove it bottom-up, and only what is empty.
            for d in sorted(RUN_DIR.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                RUN_DIR.rmdir()
        return leftovers
