"""StatsService: what kubelet's summary API and `kubectl top` read, per container and pod.

Each figure comes from a reader that owns one outside thing (cgroups, the writable
layer's dir, the pod's network namespace). CPU usage in nano-cores is the rate between
this sample and the one before it for the same container or pod, as containerd computes
it; the first sample of anything has none.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from crispy import errors
from crispy.containers.manager import ContainerManager
from crispy.containers.record import Container
from crispy.sandbox.pod import Pod
from crispy.stats import cgroups, devices, fs, network, procs

# kubelet polls every 10-15 s; a writable layer is walked at most this often.
FS_MAX_AGE = 5.0


@dataclass
class ContainerSample:
    container: Container
    cgroup: cgroups.CgroupStats | None
    nano_cores: int | None
    fs_bytes: int | None
    fs_inodes: int | None
    fs_mountpoint: str
    # only for the metrics (detail=True):
    processes: procs.ProcStats | None = None
    nofile: int | None = None  # soft open-files limit of the container's first process
    fs_capacity: devices.Capacity | None = None


@dataclass
class PodSample:
    pod: Pod
    cgroup: cgroups.CgroupStats | None
    nano_cores: int | None
    interfaces: list[network.IfStats] = field(default_factory=list)
    containers: list[ContainerSample] = field(default_factory=list)
    processes: procs.ProcStats | None = None  # only for the metrics


class StatsService:
    def __init__(self, containers: ContainerManager) -> None:
        self.containers = containers
        self.sandboxes = containers.sandboxes
        self._prev: dict[str, tuple[int, int]] = {}  # id -> (timestamp ns, cpu ns)
        self._lock = threading.Lock()

    def _rate(self, key: str, st: cgroups.CgroupStats | None) -> int | None:
        if st is None or st.cpu_usage_ns is None:
            return None
        with self._lock:
            prev = self._prev.get(key)
            self._prev[key] = (st.timestamp, st.cpu_usage_ns)
        if prev is None or st.timestamp <= prev[0] or st.cpu_usage_ns < prev[1]:
            return None
        return (st.cpu_usage_ns - prev[1]) * 1_000_000_000 // (st.timestamp - prev[0])

    def _writable_dir(self, c: Container) -> str:
        images = self.containers.images
        snap = images.store.get_snapshot(c.info.snapshot)
        return images.snapshotter.writable_dir(snap.id) if snap else ""

    def _container_sample(self, c: Container, detail: bool = False) -> ContainerSample:
        running = c.state == "running"
        cg_path = self.containers.cgroup_path(c) if running else ""
        st = cgroups.read(cg_path, extra=detail) if running else None
        d = self._writable_dir(c)
        used = fs.usage_cached(d, FS_MAX_AGE) if d else None
        root = self.containers.images.snapshotter.root
        sample = ContainerSample(
            container=c,
            cgroup=st,
            nano_cores=self._rate(c.id, st),
            fs_bytes=used[0] if used else None,
            fs_inodes=used[1] if used else None,
            fs_mountpoint=root,
        )
        if detail:
            sample.fs_capacity = devices.capacity(d or root)
            if st is not None:
                sample.processes = _procs(cg_path)
                sample.nofile = procs.soft_nofile(c.pid) if c.pid else None
        return sample

    def _forget_gone(self) -> None:
        live = set(self.containers.containers) | set(self.sandboxes.pods)
        with self._lock:
            for key in [k for k in self._prev if k not in live]:
                del self._prev[key]

    # -- containers --------------------------------------------------------------------

    def _select(self, cid: str, pod_id: str, labels: dict[str, str]) -> list[Container]:
        # Exited ones too, with their writable layer and no cgroup figures: kubelet's CRI stats
        # provider keeps the latest container of each name even once it has exited
        # (removeTerminatedContainers), and counts its layer toward ephemeral storage.
        return self.containers.select(cid, None, pod_id, labels)

    async def container(self, cid: str) -> ContainerSample:
        c = self.containers.get(cid)
        if c.state not in ("running", "created"):
            # As containerd: no task, no stats. Its cgroup is gone; nothing to report.
            raise errors.FailedPrecondition(f"container {c.id} is {c.state}: it has no stats")
        return await asyncio.to_thread(self._container_sample, c)

    async def list_containers(
        self, cid: str = "", pod_id: str = "", labels: dict[str, str] | None = None
    ) -> list[ContainerSample]:
        found = self._select(cid, pod_id, labels or {})
        samples = await asyncio.to_thread(lambda: [self._container_sample(c) for c in found])
        self._forget_gone()
        return samples

    # -- pods ------------------------------------------------------------------------------

    def _pod_sample(self, pod: Pod, detail: bool = False) -> PodSample:
        # Containers first: the pod's cgroup, read last, then holds at least their sum.
        ctrs = [
            self._container_sample(c, detail)
            for c in self.containers.of_pod(pod.id)
            if c.state in ("running", "created")
        ]
        ready = pod.state == "ready"
        cg_path = pod.info.cgroup_path if ready else ""
        st = cgroups.read(cg_path, extra=detail) if ready else None
        netns = pod.info.netns
        ifaces = network.interfaces(netns) if netns and ready else []
        sample = PodSample(pod, st, self._rate(pod.id, st), ifaces, ctrs)
        if detail and st is not None:
            sample.processes = _procs(cg_path)
        return sample

    async def pod(self, pod_id: str) -> PodSample:
        pod = self.sandboxes.get(pod_id)
        return await asyncio.to_thread(self._pod_sample, pod)

    async def list_pods(
        self, pod_id: str = "", labels: dict[str, str] | None = None, detail: bool = False
    ) -> list[PodSample]:
        """Ready pods; with `detail`, the further figures ListPodSandboxMetrics shows."""
        pods = self.sandboxes.list(pod_id, "ready", labels or {})
        samples = await asyncio.to_thread(lambda: [self._pod_sample(p, detail) for p in pods])
        self._forget_gone()
        return samples


def _procs(cgroup_path: str) -> procs.ProcStats | None:
    d = cgroups.procs_dir(cgroup_path)
    return procs.count(procs.cgroup_pids(d)) if d else None
