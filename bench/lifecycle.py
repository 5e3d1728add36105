"""Pod sandbox lifecycle latency: RunPodSandbox, PodSandboxStatus, StopPodSandbox and
RemovePodSandbox, p50/p95 over N pods, for crispy and, where installed, containerd 1.6.

Each pod goes through all four calls, first one pod at a time, then K pods at a time (K
threads, each with its own pods; the parallel mode also reports pods/s). Both runtimes run
the same local pause image, pulled through CRI before timing, on their own CNI bridge
network; containerd starts a pause container per pod with runc, crispy pins namespaces
instead. The bench speaks only CRI, so any runtime works with `--endpoint` (measured as it
is configured; only the pods the bench made are cleaned up there).

    python -m bench.lifecycle [--pods 30] [--parallel 4] [--endpoint unix:///run/x.sock]
                              [--no-containerd] [--no-crispy]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc

from bench.runtimes import Containerd
from crispy.cli.client import CriClient
from crispy.cri.api import pb
from support.daemon import Crispyd
from support.images import BUSYBOX, Layer, LayerBuilder, image_config, push_image
from support.registry import Registry

CALLS = ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox")
PAUSE_ENTRYPOINT = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
CNI_BIN_DIR = "/usr/lib/cni"
NETNS_DIR = Path("/var/run/netns")
LABEL = "crispy-bench-lifecycle"  # its value is the run's token: what cleanup lists by
CALL_TIMEOUT = 120.0
TARGET_RATIO = 0.5  # the target: crispy's RunPodSandbox p50 at most half containerd's


@dataclass(frozen=True)
class Net:
    bridge: str
    subnet: str


CRISPY_NET = Net("crbench0", "10.252.0.0/22")
CONTAINERD_NET = Net("crbenchc0", "10.253.0.0/22")


# -- setup -----------------------------------------------------------------------------------


def write_cni_conf(conf_dir: Path, net: Net, data_dir: Path) -> None:
    """A bridge network of its own, then portmap, then loopback.

    containernetworking-plugins 1.1.1's loopback passes a prevResult through unchanged (and
    brings up "lo" whatever CNI_IFNAME is), so it is safe as the last plugin of a chain.
    """
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": f"{net.bridge}-net",
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
    (conf_dir / "10-bench.conflist").write_text(json.dumps(conflist, indent=2) + "\n")


def pause_layer() -> Layer:
    """/bin/busybox with sh and sleep as symlinks to it.

    Not support.images.busybox_layer(): its applets are hard links whose tar headers say
    mode 0644, and containerd applies a hard link header's mode to the shared inode, which
    leaves /bin/busybox unexecutable ("exec: /bin/sh: permission denied").
    """
    b = LayerBuilder()
    for d in ("bin", "dev", "etc", "proc", "sys"):
        b.dir(d)
    b.dir("tmp", mode=0o1777)
    b.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    for applet in ("sh", "sleep"):
        b.symlink(f"bin/{applet}", "busybox")
    return b.build()


def push_pause(registry: Registry) -> str:
    layer = pause_layer()
    img = push_image(
        registry, "bench/pause", "3.10", [layer], image_config([layer], entrypoint=PAUSE_ENTRYPOINT)
    )
    return img.reference


def pod_config(name: str, token: str, logs: Path) -> pb.PodSandboxConfig:
    uid = str(uuid.uuid4())
    log_dir = logs / uid
    log_dir.mkdir(parents=True)  # kubelet makes it before RunPodSandbox, too
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=uid, attempt=0),
        hostname=name,
        log_directory=str(log_dir),
        labels={LABEL: token},
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(
                    network=pb.NamespaceMode.POD,
                    pid=pb.NamespaceMode.CONTAINER,
                    ipc=pb.NamespaceMode.POD,
                )
            )
        ),
    )


# -- measuring -------------------------------------------------------------------------------


class CallFailed(Exception):
    def __init__(self, call: str, error: Exception) -> None:
        if isinstance(error, grpc.RpcError):
            text = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
        else:
            text = f"{type(error).__name__}: {error}"
        super().__init__(f"{call}: {text}")


Samples = dict[str, list[float]]


@dataclass
class Mode:
    name: str
    pods: int
    wall: float
    samples: Samples

    def pods_per_s(self) -> float:
        return self.pods / self.wall


@dataclass
class Result:
    name: str
    modes: list[Mode] = field(default_factory=list)
    error: str | None = None
    leaks: list[str] = field(default_factory=list)

    def p50(self, mode: str, call: str) -> float | None:
        for m in self.modes:
            if m.name == mode and m.samples[call]:
                return statistics.median(m.samples[call])
        return None


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Bench:
    """Pods through one CRI endpoint, each labelled with this run's token."""

    def __init__(self, client: CriClient, logs: Path) -> None:
        self.c = client
        self.logs = logs
        self.token = uuid.uuid4().hex[:12]

    def call(self, samples: Samples | None, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:
            raise CallFailed(name, e) from e
        if samples is not None:
            samples[name].append((time.perf_counter() - start) * 1000)
        return out

    def lifecycle(self, name: str, samples: Samples | None) -> None:
        config = pod_config(name, self.token, self.logs)
        rt, t = self.c.runtime, CALL_TIMEOUT
        resp = self.call(
            samples,
            "RunPodSandbox",
            lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=t),
        )
        pod = resp.pod_sandbox_id
        self.call(
            samples,
            "PodSandboxStatus",
            lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=t),
        )
        self.call(
            samples,
            "StopPodSandbox",
            lambda: rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=t),
        )
        self.call(
            samples,
            "RemovePodSandbox",
            lambda: rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=t),
        )

    def run(self, name: str, first: int, pods: int, threads: int) -> Mode:
        """`pods` pods numbered from `first`, split over `threads` threads."""
        threads = max(1, min(threads, pods))
        failed = threading.Event()
        per_thread: list[Samples] = [{call: [] for call in CALLS} for _ in range(threads)]

        def worker(w: int) -> None:
            try:
                for i in range(first + w, first + pods, threads):
                    if failed.is_set():
                        return
                    self.lifecycle(f"bench-{i}", per_thread[w])
            except BaseException:
                failed.set()
                raise

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(worker, w) for w in range(threads)]
        wall = time.perf_counter() - start
        for f in futures:
            f.result()  # the first error, if any
        merged: Samples = {call: [v for s in per_thread for v in s[call]] for call in CALLS}
        return Mode(name, pods, wall, merged)

    def cleanup(self) -> list[str]:
        """Stop and remove every pod of this run that is still there; what failed."""
        rt, problems = self.c.runtime, []
        try:
            pods = rt.ListPodSandbox(
                pb.ListPodSandboxRequest(
                    filter=pb.PodSandboxFilter(label_selector={LABEL: self.token})
                ),
                timeout=CALL_TIMEOUT,
            ).items
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                problems.append(f"cleanup: {CallFailed('ListPodSandbox', e)}")
            return problems
        for p in pods:
            try:
                self.call(
                    None,
                    "StopPodSandbox",
                    lambda p=p: rt.StopPodSandbox(
                        pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=CALL_TIMEOUT
                    ),
                )
                self.call(
                    None,
                    "RemovePodSandbox",
                    lambda p=p: rt.RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=CALL_TIMEOUT
                    ),
                )
            except CallFailed as e:
                problems.append(f"pod {p.id[:12]} left behind: {e}")
        return problems


def measure(
    name: str, endpoint: str, logs: Path, args: argparse.Namespace, pull: str | None
) -> Result:
    result = Result(name)
    with CriClient(endpoint, timeout=CALL_TIMEOUT) as client:
        bench = Bench(client, logs)
        try:
            if pull:
                bench.call(
                    None,
                    "PullImage",
                    lambda: client.image.PullImage(
                        pb.PullImageRequest(image=pb.ImageSpec(image=pull)), timeout=300
                    ),
                )
            for i in range(args.warmup):  # first-call setup (and, for --endpoint, its pull)
                bench.lifecycle(f"bench-warmup-{i}", None)
            result.modes.append(bench.run("sequential", 0, args.pods, 1))
            k = max(1, min(args.parallel, args.pods))
            result.modes.append(bench.run(f"parallel {k}", args.pods, args.pods, k))
        except CallFailed as e:
            result.error = str(e)
        finally:
            result.leaks += bench.cleanup()
    return result


# -- leaks -----------------------------------------------------------------------------------


HOSTPORT_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def nat_rules(iptables: str) -> list[list[str]]:
    if not shutil.which(iptables):
        return []
    out = subprocess.run([iptables, "-t", "nat", "-S"], capture_output=True, text=True)
    return [shlex.split(line) for line in out.stdout.splitlines()]


def jump(rule: list[str]) -> str | None:
    return rule[rule.index("-j") + 1] if "-j" in rule[:-1] else None


class HostNetwork:
    """What the CNI plugins change host-wide and leave behind after their DELs: the bridge
    plugin's isGateway turns on ip_forward, portmap's first ADD makes its nat chains. Put
    back as they were, unless someone else's pods use the chains meanwhile."""

    def __init__(self) -> None:
        self.ip_forward = IP_FORWARD.read_text()
        self.hostport = {cmd: self.has_hostport(cmd) for cmd in ("iptables", "ip6tables")}

    @staticmethod
    def has_hostport(cmd: str) -> bool:
        return any(r[:2] == ["-N", HOSTPORT_CHAINS[0]] for r in nat_rules(cmd))

    def restore(self) -> None:
        if IP_FORWARD.read_text() != self.ip_forward:
            IP_FORWARD.write_text(self.ip_forward)
        for cmd, had in self.hostport.items():
            rules = nat_rules(cmd)
            if had or not any(r[:2] == ["-N", HOSTPORT_CHAINS[0]] for r in rules):
                continue
            if any(r[:2] == ["-A", HOSTPORT_CHAINS[0]] for r in rules):
                continue  # hostPorts of pods that aren't ours
            for r in rules:
                if r[:1] == ["-A"] and r[1] not in HOSTPORT_CHAINS and jump(r) in HOSTPORT_CHAINS:
                    subprocess.run([cmd, "-t", "nat", "-D", *r[1:]], capture_output=True)
            for flag in ("-F", "-X"):
                for chain in HOSTPORT_CHAINS:
                    subprocess.run([cmd, "-t", "nat", flag, chain], capture_output=True)


def mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix):
            out.append(target)
    return out


def netns_names() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@contextlib.contextmanager
def no_leftovers(result_of: Callable[[], Result | None], base: Path, bridge: str) -> Iterator[None]:
    """After the runtime is stopped: unmount what is left under `base`, delete the bridge,
    and note both and any netns that appeared meanwhile on the runtime's result."""
    before = netns_names()
    try:
        yield
    finally:
        notes = []
        for target in reversed(mounts_under(base)):
            notes.append(f"mount {target} left behind (unmounted)")
            subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)
        if link_exists(bridge):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        notes += [f"netns {n} appeared and is still there" for n in sorted(netns_names() - before)]
        result = result_of()
        if result is not None:
            result.leaks += notes
        else:
            for n in notes:
                print(f"warning: {n}", file=sys.stderr)


# -- runtimes --------------------------------------------------------------------------------


def run_crispy(base: Path, pause: str, args: argparse.Namespace) -> Result:
    """crispyd on `base` itself: its state dir holds a unix socket per pod, under
    <state>/pods/<64 hex>/, so the path has to stay short (AF_UNIX allows 107 bytes)."""
    conf_dir = base / "net.d"
    write_cni_conf(conf_dir, CRISPY_NET, base / "ipam")
    config = (
        'log_level = "warning"\n'
        f'sandbox_image = "{pause}"\n'
        "[cni]\n"
        f'conf_dir = "{conf_dir}"\n'
        f'bin_dirs = ["{CNI_BIN_DIR}"]\n'
        "[registry]\n"
        f'hosts_dir = "{base / "certs.d"}"\n'
    )
    result: Result | None = None
    with no_leftovers(lambda: result, base, CRISPY_NET.bridge):
        d = Crispyd(base, config=config)
        try:
            d.start()
            result = measure("crispy", d.endpoint, base / "logs", args, pause)
        except Exception as e:
            result = Result("crispy", error=f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.stop()
    assert result is not None
    return result


def run_containerd(base: Path, pause: str, registry: str, args: argparse.Namespace) -> Result:
    conf_dir = base / "net.d"
    write_cni_conf(conf_dir, CONTAINERD_NET, base / "ipam")
    result: Result | None = None
    with no_leftovers(lambda: result, base, CONTAINERD_NET.bridge):
        ctd = Containerd(
            base / "daemon",
            sandbox_image=pause,
            cni_conf_dir=conf_dir,
            cni_bin_dir=CNI_BIN_DIR,
            plain_http=(registry,),
            private_runc=True,
        )
        try:
            ctd.start()
            result = measure("containerd", ctd.endpoint, base / "logs", args, pause)
        except Exception as e:
            result = Result("containerd", error=f"{type(e).__name__}: {e}")
        finally:
            ctd.stop()  # pods are gone by now (measure cleans up); stop kills any leftovers
            if result is not None:
                result.leaks += [f"containerd-shim {pid} still running" for pid in ctd.shim_pids()]
    assert result is not None
    return result


# -- report ----------------------------------------------------------------------------------


def report(results: list[Result]) -> None:
    w = max([12, *(len(r.name) + 1 for r in results)])
    for r in results:
        for m in r.modes:
            for call in CALLS:
                v = m.samples[call]
                if v:
                    print(
                        f"{r.name:{w}} {m.name:11} {call:17} "
                        f"p50 {statistics.median(v):8.2f} ms  p95 {p95(v):8.2f} ms"
                    )
            print(
                f"{r.name:{w}} {m.name:11} {'all four calls':17} "
                f"{m.pods_per_s():7.1f} pods/s ({m.pods} pods in {m.wall:.2f} s)"
            )
        if r.error:
            print(f"{r.name}: {r.error}")
        for leak in r.leaks:
            print(f"{r.name}: warning: {leak}")
    by_name = {r.name: r for r in results}
    crispy, containerd = by_name.get("crispy"), by_name.get("containerd")
    if crispy and containerd:
        a = crispy.p50("sequential", "RunPodSandbox")
        b = containerd.p50("sequential", "RunPodSandbox")
        sa = f"{a:.2f} ms" if a is not None else "n/a"
        sb = f"{b:.2f} ms" if b is not None else "n/a"
        ratio = f" ({a / b:.2f}x; target <= {TARGET_RATIO:.2f}x)" if a and b else ""
        print(f"RunPodSandbox p50: crispy {sa} vs containerd {sb}{ratio}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=30, help="pods per mode (default 30)")
    p.add_argument("--parallel", type=int, default=4, help="pods at a time in parallel mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed pods first (default 1)")
    p.add_argument("--endpoint", help="also measure this CRI endpoint")
    p.add_argument("--no-containerd", action="store_true")
    p.add_argument("--no-crispy", action="store_true")
    args = p.parse_args(argv)
    if args.pods < 1 or args.parallel < 1 or args.warmup < 0:
        p.error("--pods and --parallel must be at least 1, --warmup at least 0")

    host = HostNetwork()
    # /tmp and a short name: crispyd's per-pod sockets live under <base>/c/state/pods/<id>/.
    base = Path(tempfile.mkdtemp(prefix="crbl-", dir="/tmp"))
    results: list[Result] = []
    try:
        registry = Registry(base / "registry").start()
        try:
            pause = push_pause(registry)
            k = max(1, min(args.parallel, args.pods))
            print(
                f"lifecycle: {args.pods} pods one at a time, then {args.pods} pods {k} at a "
                f"time ({args.warmup} untimed warm-up pod first); pause image {pause}"
            )
            if not args.no_crispy:
                results.append(run_crispy(base / "c", pause, args))
            if not args.no_containerd and shutil.which("containerd"):
                results.append(run_containerd(base / "containerd", pause, registry.host, args))
            if args.endpoint:
                result = Result(args.endpoint)
                try:
                    result = measure(args.endpoint, args.endpoint, base / "logs", args, None)
                except Exception as e:
                    result.error = f"{type(e).__name__}: {e}"
                results.append(result)
        finally:
            registry.stop()
        report(results)
    finally:
        host.restore()
        left = mounts_under(base)
        if left:
            print(f"warning: {base} kept: still mounted there: {', '.join(left)}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
