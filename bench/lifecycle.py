"""Pod and container lifecycle latency and memory per pod: crispy vs containerd 1.6.

containerd is measured where it is installed.

Each pod goes through RunPodSandbox, CreateContainer + StartContainer of a busybox container
(until ContainerStatus says RUNNING: "pod+container start" is the wall time of the three),
PodSandboxStatus, StopContainer (timeout 2; the container exits on SIGTERM), RemoveContainer,
StopPodSandbox and RemovePodSandbox, first one pod at a time, then K pods at a time (K
threads, each with its own pods; the parallel mode also reports pods/s). With
--no-containers the pods get no container (the four pod calls only).

Then M pods with one such container each run side by side, and the bench sums the PSS
(/proc/<pid>/smaps_rollup) of every per-pod process that is not the container's own: the
pod's shim and its other descendants, and the pause (containerd) or infra (crispy, PID-
sharing pods only) process; the report gives the mean per pod.

Both runtimes run the same local images (pulled through CRI before timing) on their own CNI
bridge network: a pause image (a static C pause like Kubernetes', when gcc can build one,
else busybox sh) and a busybox image for the containers; containerd starts a pause
container per pod with runc, crispy pins namespaces instead. The bench speaks only CRI, so
any runtime works with `--endpoint` (measured as it is configured; only the pods the bench
made are cleaned up there, and its memory figure counts only the processes the pod status
names: "pid", "shimPid" and their descendants).

With --stalled-events, a GetContainerEvents subscriber that never reads is connected
for the whole run: the figures must match a run without it.

    python -m bench.lifecycle [--pods 30] [--parallel 4] [--mem-pods 10] [--no-containers]
                              [--endpoint unix:///run/x.sock] [--no-containerd] [--no-crispy]
                              [--stalled-events]
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
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc

from bench.runtimes import Containerd
from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.images import BUSYBOX, Layer, LayerBuilder, image_config, push_image
from support.registry import Registry
from support.scratch import PAUSE_USER, pause_layer

START = "pod+container start"  # RunPodSandbox + CreateContainer + StartContainer, to RUNNING
POD_CALLS = ("RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox")
CONTAINER_CALLS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    START,
    "PodSandboxStatus",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
# Exits on SIGTERM (`wait` returns at once for a trapped signal); a bare `sleep` as PID 1
# has no handler, so it would ignore SIGTERM and every stop would take the whole timeout.
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
STOP_TIMEOUT = 2  # StopContainer's grace period, seconds
CNI_BIN_DIR = "/usr/lib/cni"
NETNS_DIR = Path("/var/run/netns")
LABEL = "crispy-bench-lifecycle"  # its value is the run's token: what cleanup lists by
CALL_TIMEOUT = 120.0
RUNNING_TIMEOUT = 30.0  # from StartContainer's return to ContainerStatus saying RUNNING
MEM_SETTLE = 1.0  # seconds between the last container running and reading PSS
TARGET_RATIO = 0.5  # the target: crispy's RunPodSandbox p50 at most half containerd's
START_TARGET_RATIO = 0.7  # crispy's pod+container start p50 at most 0.7x containerd's


@dataclass(frozen=True)
class Net:
    bridge: str
    subnet: str


CRISPY_NET = Net("crbench0", "10.252.0.0/22")
CONTAINERD_NET = Net("crbenchc0", "10.253.0.0/22")


@dataclass(frozen=True)
class Images:
    pause: str
    pause_kind: str  # "C": the static pause of tests/support/pause
    busybox: str


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


def busybox_layer() -> Layer:
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


def push_images(registry: Registry, workdir: Path) -> Images:
    """The pause image (FROM scratch: the tests' static C pause, as Kubernetes builds it)
    and the containers' busybox image."""
    bb = busybox_layer()
    busybox = push_image(
        registry, "bench/busybox", "1", [bb], image_config([bb], cmd=["/bin/sh"])
    ).reference
    layer = pause_layer()
    config = image_config([layer], entrypoint=["/pause"], user=PAUSE_USER)
    pause = push_image(registry, "bench/pause", "3.10", [layer], config).reference
    return Images(pause, "C", busybox)


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


def container_config(image: str, token: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleeper", attempt=0),
        image=pb.ImageSpec(image=image),
        command=SLEEPER,
        labels={LABEL: token},
        log_path="sleeper/0.log",  # kubelet's layout: <container name>/<attempt>.log
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(),
            resources=pb.LinuxContainerResources(),
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
class Memory:
    """PSS of the per-pod processes of `pods` pods, by process name (comm)."""

    pods: int
    by_name: dict[str, list[int]] = field(default_factory=dict)  # comm: each process's kB
    notes: list[str] = field(default_factory=list)

    def total_kib(self) -> int:
        return sum(sum(v) for v in self.by_name.values())

    def processes(self) -> int:
        return sum(len(v) for v in self.by_name.values())

    def per_pod_mib(self) -> float:
        return self.total_kib() / 1024 / self.pods


@dataclass
class Result:
    name: str
    modes: list[Mode] = field(default_factory=list)
    memory: Memory | None = None
    error: str | None = None
    leaks: list[str] = field(default_factory=list)

    def p50(self, mode: str, call: str) -> float | None:
        for m in self.modes:
            if m.name == mode and m.samples.get(call):
                return statistics.median(m.samples[call])
        return None


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# -- processes -------------------------------------------------------------------------------


def children_of() -> dict[int, list[int]]:
    """ppid: its children, for every process now."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # comm may hold spaces and parens
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def with_descendants(roots: Collection[int], kids: dict[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    todo = [p for p in roots if p > 0]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += kids.get(pid, [])
    return seen


def node_helpers() -> list[tuple[int, int]]:
    """crispy's shim zygote (pid, PSS kB): shared by every pod of the node, so not a
    per-pod process, but reported beside them (shims forked from it share its cmdline
    and are told apart by their name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"--zygote" in cmdline and comm(pid) != "crispy-shim":
            kib = pss_kib(pid)
            if kib is not None:
                found.append((pid, kib))
    return found


def pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def verbose_info(info: Any) -> dict[str, Any]:
    """The JSON a verbose status's info["info"] holds (containerd's and crispy's layout)."""
    try:
        doc = json.loads(info.get("info", "{}"))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def as_pid(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# Processes of a runtime's pods that the pod status doesn't name (containerd's shims): a
# function of the pod ids.
ExtraRoots = Callable[[Collection[str]], list[int]]


class Bench:
    """Pods (and their containers) through one CRI endpoint, labelled with this run's token."""

    def __init__(self, client: CriClient, logs: Path, image: str | None) -> None:
        self.c = client
        self.logs = logs
        self.image = image  # the containers' image; None: pods without containers
        self.token = uuid.uuid4().hex[:12]

    @property
    def calls(self) -> tuple[str, ...]:
        return CONTAINER_CALLS if self.image else POD_CALLS

    def call(self, samples: Samples | None, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:
            raise CallFailed(name, e) from e
        if samples is not None:
            samples[name].append((time.perf_counter() - start) * 1000)
        return out

    def start_pod(self, name: str, samples: Samples | None) -> tuple[str, pb.PodSandboxConfig]:
        config = pod_config(name, self.token, self.logs)
        resp = self.call(
            samples,
            "RunPodSandbox",
            lambda: self.c.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT
            ),
        )
        return resp.pod_sandbox_id, config

    def start_container(
        self, pod: str, pod_cfg: pb.PodSandboxConfig, samples: Samples | None
    ) -> str:
        """CreateContainer, StartContainer, then ContainerStatus until RUNNING."""
        assert self.image is not None
        rt, t = self.c.runtime, CALL_TIMEOUT
        config = container_config(self.image, self.token)
        cid = self.call(
            samples,
            "CreateContainer",
            lambda: rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=pod, config=config, sandbox_config=pod_cfg
                ),
                timeout=t,
            ),
        ).container_id
        self.call(
            samples,
            "StartContainer",
            lambda: rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=t),
        )
        deadline = time.monotonic() + RUNNING_TIMEOUT
        while True:
            st = self.call(
                None,
                "ContainerStatus",
                lambda: (
                    rt.ContainerStatus(
                        pb.ContainerStatusRequest(container_id=cid), timeout=t
                    ).status
                ),
            )
            if st.state == pb.CONTAINER_RUNNING:
                return str(cid)
            if st.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                state = pb.ContainerState.Name(st.state)
                why = f"exit code {st.exit_code} {st.reason} {st.message}".strip()
                raise CallFailed(
                    "ContainerStatus",
                    RuntimeError(f"container {cid[:12]} is {state}, not RUNNING ({why})"),
                )
            time.sleep(0.002)

    def stop_container(self, cid: str, samples: Samples | None, timeout: int) -> None:
        rt, t = self.c.runtime, CALL_TIMEOUT
        self.call(
            samples,
            "StopContainer",
            lambda: rt.StopContainer(
                pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=t
            ),
        )
        self.call(
            samples,
            "RemoveContainer",
            lambda: rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=t),
        )

    def stop_pod(self, pod: str, samples: Samples | None) -> None:
        rt, t = self.c.runtime, CALL_TIMEOUT
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

    def pod_status(self, pod: str, samples: Samples | None, verbose: bool = False) -> Any:
        return self.call(
            samples,
            "PodSandboxStatus",
            lambda: self.c.runtime.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=verbose),
                timeout=CALL_TIMEOUT,
            ),
        )

    def lifecycle(self, name: str, samples: Samples | None) -> None:
        start = time.perf_counter()
        pod, config = self.start_pod(name, samples)
        cid = None
        if self.image:
            cid = self.start_container(pod, config, samples)
            if samples is not None:
                samples[START].append((time.perf_counter() - start) * 1000)
        self.pod_status(pod, samples)
        if cid:
            self.stop_container(cid, samples, STOP_TIMEOUT)
        self.stop_pod(pod, samples)

    def run(self, name: str, first: int, pods: int, threads: int) -> Mode:
        """`pods` pods numbered from `first`, split over `threads` threads."""
        threads = max(1, min(threads, pods))
        failed = threading.Event()
        per_thread: list[Samples] = [{call: [] for call in self.calls} for _ in range(threads)]

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
        merged: Samples = {call: [v for s in per_thread for v in s[call]] for call in self.calls}
        return Mode(name, pods, wall, merged)

    def memory(self, pods: int, extra_roots: ExtraRoots | None) -> Memory:
        """`pods` pods with a running container each; the PSS of their processes but the
        containers' own; then the pods are stopped and removed."""
        mem = Memory(pods)
        started: list[tuple[str, str]] = []
        try:
            for i in range(pods):
                pod, config = self.start_pod(f"bench-mem-{i}", None)
                started.append((pod, ""))
                started[-1] = (pod, self.start_container(pod, config, None))
            time.sleep(MEM_SETTLE)
            roots: set[int] = set()
            containers: set[int] = set()
            for pod, cid in started:
                info = verbose_info(self.pod_status(pod, None, verbose=True).info)
                named = [as_pid(info.get(key)) for key in ("pid", "shimPid")]
                if not any(named) and extra_roots is None:
                    mem.notes.append(f"pod {pod[:12]}: its status names no process")
                roots.update(named)
                status = self.call(
                    None,
                    "ContainerStatus",
                    lambda cid=cid: self.c.runtime.ContainerStatus(
                        pb.ContainerStatusRequest(container_id=cid, verbose=True),
                        timeout=CALL_TIMEOUT,
                    ),
                )
                pid = as_pid(verbose_info(status.info).get("pid"))
                if pid <= 0:
                    raise CallFailed(
                        "ContainerStatus", RuntimeError(f"no pid for container {cid[:12]}")
                    )
                containers.add(pid)
            if extra_roots is not None:
                roots.update(extra_roots([pod for pod, _ in started]))
            kids = children_of()
            for pid in sorted(with_descendants(roots, kids) - with_descendants(containers, kids)):
                kib = pss_kib(pid)
                if kib is not None:
                    mem.by_name.setdefault(comm(pid), []).append(kib)
            for pid, kib in node_helpers():
                mem.notes.append(
                    f"per node, not per pod: {comm(pid)} {pid} (shim zygote) {kib / 1024:.2f} MiB "
                    f"PSS, {kib / 1024 / pods:.2f} MiB/pod over these {pods} pods"
                )
        finally:
            for pod, cid in started:
                with contextlib.suppress(CallFailed):  # cleanup() retries what is left
                    if cid:
                        self.stop_container(cid, None, 0)
                    self.stop_pod(pod, None)
        return mem

    def cleanup(self) -> list[str]:
        """Stop and remove every container and pod of this run that is still there; what
        failed."""
        rt, problems = self.c.runtime, []
        selector = {LABEL: self.token}
        try:
            containers = rt.ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector=selector)),
                timeout=CALL_TIMEOUT,
            ).containers
        except grpc.RpcError as e:
            containers = []
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                problems.append(f"cleanup: {CallFailed('ListContainers', e)}")
        for ctr in containers:
            try:
                self.stop_container(ctr.id, None, 0)
            except CallFailed as e:
                problems.append(f"container {ctr.id[:12]} left behind: {e}")
        try:
            pods = rt.ListPodSandbox(
                pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector=selector)),
                timeout=CALL_TIMEOUT,
            ).items
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                problems.append(f"cleanup: {CallFailed('ListPodSandbox', e)}")
            return problems
        for p in pods:
            try:
                self.stop_pod(p.id, None)
            except CallFailed as e:
                problems.append(f"pod {p.id[:12]} left behind: {e}")
        return problems


def measure(
    name: str,
    endpoint: str,
    logs: Path,
    args: argparse.Namespace,
    pull: Sequence[str],
    container_image: str | None,
    extra_roots: ExtraRoots | None = None,
) -> Result:
    """Pull `pull` untimed, then the warm-up, the two timed modes and (with containers) the
    memory phase; clean up whatever of the run is left."""
    result = Result(name)
    with CriClient(endpoint, timeout=CALL_TIMEOUT) as client:
        bench = Bench(client, logs, container_image)
        stalled = None
        if args.stalled_events:
            # A GetContainerEvents subscriber that never reads: the runtime must not wait
            # for it (crispy drops it once it is 16 MiB or 10,000 events behind).
            stalled = client.runtime.GetContainerEvents(pb.GetEventsRequest())
            stalled.initial_metadata()
        try:
            for ref in pull:
                bench.call(
                    None,
                    "PullImage",
                    lambda ref=ref: client.image.PullImage(
                        pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=300
                    ),
                )
            for i in range(args.warmup):  # first-call setup (and, for --endpoint, its pull)
                bench.lifecycle(f"bench-warmup-{i}", None)
            result.modes.append(bench.run("sequential", 0, args.pods, 1))
            k = max(1, min(args.parallel, args.pods))
            result.modes.append(bench.run(f"parallel {k}", args.pods, args.pods, k))
            if container_image and args.mem_pods > 0:
                result.memory = bench.memory(args.mem_pods, extra_roots)
        except CallFailed as e:
            result.error = str(e)
        finally:
            result.leaks += bench.cleanup()
            if stalled is not None:
                stalled.cancel()
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


R = TypeVar("R", bound=Result)


def on_crispy(
    base: Path,
    images: Images,
    net: Net,
    run: Callable[[str], R],
    failed: Callable[[str], R],
) -> R:
    """`run(endpoint)` against a crispyd on `base` itself (its state dir holds a unix socket
    per pod, under <state>/pods/<64 hex>/, so the path has to stay short: AF_UNIX allows 107
    bytes), with the bench's CNI network; `failed(message)` when it can't be measured."""
    conf_dir = base / "net.d"
    write_cni_conf(conf_dir, net, base / "ipam")
    config = (
        'log_level = "warning"\n'
        f'sandbox_image = "{images.pause}"\n'
        "[cni]\n"
        f'conf_dir = "{conf_dir}"\n'
        f'bin_dirs = ["{CNI_BIN_DIR}"]\n'
        "[registry]\n"
        f'hosts_dir = "{base / "certs.d"}"\n'
    )
    result: R | None = None
    with no_leftovers(lambda: result, base, net.bridge):
        d = Crispyd(base, config=config)
        try:
            d.start()
            result = run(d.endpoint)
        except Exception as e:
            result = failed(f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.stop()
    assert result is not None
    return result


def on_containerd(
    base: Path,
    images: Images,
    registry: str,
    net: Net,
    run: Callable[[str, Callable[[Collection[str]], list[int]]], R],
    failed: Callable[[str], R],
) -> R:
    """`run(endpoint, shim_pids)` against containerd 1.6 on `base` with the same network
    set-up; what containerd's stop had to clean up is added to the result's leaks."""
    conf_dir = base / "net.d"
    write_cni_conf(conf_dir, net, base / "ipam")
    result: R | None = None
    with no_leftovers(lambda: result, base, net.bridge):
        ctd = Containerd(
            base / "daemon",
            sandbox_image=images.pause,
            cni_conf_dir=conf_dir,
            cni_bin_dir=CNI_BIN_DIR,
            plain_http=(registry,),
            private_runc=True,
        )
        try:
            ctd.start()
            result = run(ctd.endpoint, ctd.shim_pids)
        except Exception as e:
            result = failed(f"{type(e).__name__}: {e}")
        finally:
            # The bench removed its pods; stop kills any leftovers and says what it had to
            # kill or delete.
            leftovers = ctd.stop()
            if result is not None:
                result.leaks += leftovers
    assert result is not None
    return result


def run_crispy(base: Path, images: Images, args: argparse.Namespace) -> Result:
    ctr = None if args.no_containers else images.busybox
    pull = [images.pause, *([ctr] if ctr else [])]
    return on_crispy(
        base,
        images,
        CRISPY_NET,
        lambda endpoint: measure("crispy", endpoint, base / "logs", args, pull, ctr),
        lambda error: Result("crispy", error=error),
    )


def run_containerd(base: Path, images: Images, registry: str, args: argparse.Namespace) -> Result:
    ctr = None if args.no_containers else images.busybox
    pull = [images.pause, *([ctr] if ctr else [])]
    return on_containerd(
        base,
        images,
        registry,
        CONTAINERD_NET,
        lambda endpoint, shim_pids: measure(
            "containerd", endpoint, base / "logs", args, pull, ctr, shim_pids
        ),
        lambda error: Result("containerd", error=error),
    )


# -- report ----------------------------------------------------------------------------------


def print_outcome(r: Result, notes: Sequence[str] = ()) -> None:
    """A runtime's notes, its error and what it left behind, after its figures."""
    for note in notes:
        print(f"{r.name}: {note}")
    if r.error:
        print(f"{r.name}: {r.error}")
    for leak in r.leaks:
        print(f"{r.name}: warning: {leak}")


def ratio_line(label: str, a: float | None, b: float | None, unit: str, target: str) -> str:
    sa = f"{a:.2f} {unit}" if a is not None else "n/a"
    sb = f"{b:.2f} {unit}" if b is not None else "n/a"
    ratio = f"{a / b:.2f}x; " if a and b else ""
    return f"{label}: crispy {sa} vs containerd {sb} ({ratio}target {target})"


def report(results: list[Result], containers: bool) -> None:
    w = max([12, *(len(r.name) + 1 for r in results)])
    for r in results:
        for m in r.modes:
            for call, v in m.samples.items():
                if v:
                    print(
                        f"{r.name:{w}} {m.name:11} {call:19} "
                        f"p50 {statistics.median(v):8.2f} ms  p95 {p95(v):8.2f} ms"
                    )
            whole = "all four calls" if set(m.samples) == set(POD_CALLS) else "whole lifecycle"
            print(
                f"{r.name:{w}} {m.name:11} {whole:19} "
                f"{m.pods_per_s():7.1f} pods/s ({m.pods} pods in {m.wall:.2f} s)"
            )
        mem = r.memory
        if mem is not None:
            parts = ", ".join(
                f"{name} {sum(kib) / 1024 / mem.pods:.2f} MiB/pod ({len(kib)})"
                for name, kib in sorted(mem.by_name.items(), key=lambda kv: -sum(kv[1]))
            )
            print(
                f"{r.name:{w}} {'memory':11} {f'{mem.pods} pods':19} "
                f"{mem.per_pod_mib():8.2f} MiB/pod PSS; {mem.processes()} processes: {parts}"
            )
            for note in mem.notes:
                print(f"{r.name}: memory: {note}")
        print_outcome(r)
    by_name = {r.name: r for r in results}
    crispy, containerd = by_name.get("crispy"), by_name.get("containerd")
    if crispy and containerd:
        seq = "sequential"
        print(
            ratio_line(
                "RunPodSandbox p50",
                crispy.p50(seq, "RunPodSandbox"),
                containerd.p50(seq, "RunPodSandbox"),
                "ms",
                f"<= {TARGET_RATIO:.2f}x",
            )
        )
        if containers:
            print(
                ratio_line(
                    f"{START} p50",
                    crispy.p50(seq, START),
                    containerd.p50(seq, START),
                    "ms",
                    f"<= {START_TARGET_RATIO:.1f}x",
                )
            )
            a, b = crispy.memory, containerd.memory
            print(
                ratio_line(
                    "memory per pod",
                    a.per_pod_mib() if a else None,
                    b.per_pod_mib() if b else None,
                    "MiB",
                    "<= containerd",
                )
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=30, help="pods per mode (default 30)")
    p.add_argument("--parallel", type=int, default=4, help="pods at a time in parallel mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed pods first (default 1)")
    p.add_argument(
        "--mem-pods", type=int, default=10, help="pods running at once for memory (default 10)"
    )
    p.add_argument(
        "--no-containers", action="store_true", help="pods only: no containers, no memory"
    )
    p.add_argument("--endpoint", help="also measure this CRI endpoint")
    p.add_argument(
        "--stalled-events",
        action="store_true",
        help="with a GetContainerEvents subscriber that never reads, all along",
    )
    p.add_argument("--no-containerd", action="store_true")
    p.add_argument("--no-crispy", action="store_true")
    args = p.parse_args(argv)
    if args.pods < 1 or args.parallel < 1 or args.warmup < 0 or args.mem_pods < 0:
        p.error("--pods and --parallel must be at least 1, --warmup and --mem-pods at least 0")

    host = HostNetwork()
    # /tmp and a short name: crispyd's per-pod sockets live under <base>/c/state/pods/<id>/.
    base = Path(tempfile.mkdtemp(prefix="crbl-", dir="/tmp"))
    results: list[Result] = []
    try:
        registry = Registry(base / "registry").start()
        try:
            images = push_images(registry, base)
            k = max(1, min(args.parallel, args.pods))
            what = "pods" if args.no_containers else "pods with a busybox container each"
            print(
                f"lifecycle: {args.pods} {what} one at a time, then {args.pods} {k} at a time "
                f"({args.warmup} untimed warm-up pod first); pause image {images.pause} "
                f"({images.pause_kind})"
            )
            if not args.no_containers and args.mem_pods:
                print(f"memory: {args.mem_pods} pods with a busybox container each, at once")
            if not args.no_crispy:
                results.append(run_crispy(base / "c", images, args))
            if not args.no_containerd and shutil.which("containerd"):
                results.append(run_containerd(base / "containerd", images, registry.host, args))
            if args.endpoint:
                result = Result(args.endpoint)
                ctr = None if args.no_containers else images.busybox
                try:
                    result = measure(
                        args.endpoint, args.endpoint, base / "logs", args, [ctr] if ctr else [], ctr
                    )
                except Exception as e:
                    result.error = f"{type(e).__name__}: {e}"
                results.append(result)
        finally:
            registry.stop()
        report(results, not args.no_containers)
    finally:
        host.restore()
        left = mounts_under(base)
        if left:
            print(f"warning: {base} kept: still mounted there: {', '.join(left)}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
