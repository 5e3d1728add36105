"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors, ListPodSandboxMetrics."""

from __future__ import annotations

import time
from typing import Any

from crispy.api import pb
from crispy.stats import cadvisor
from crispy.stats.cgroups import CgroupStats
from crispy.stats.service import ContainerSample, PodSample, StatsService

# kubelet's /metrics/cadvisor families (stats/cadvisor.py), as CRI descriptors
DESCRIPTORS = [
    pb.MetricDescriptor(name=f.name, help=f.help, label_keys=list(f.label_keys))
    for f in cadvisor.FAMILIES
]
_TYPE = {f.name: pb.COUNTER if f.counter else pb.GAUGE for f in cadvisor.FAMILIES}


def _u64(v: int | None) -> pb.UInt64Value | None:
    return None if v is None else pb.UInt64Value(value=max(0, int(v)))


def _cpu(st: CgroupStats | None, nano_cores: int | None) -> pb.CpuUsage:
    ts = st.timestamp if st else time.time_ns()
    return pb.CpuUsage(
        timestamp=ts,
        usage_core_nano_seconds=_u64(st.cpu_usage_ns if st else None),
        usage_nano_cores=_u64(nano_cores),
    )


def _memory(st: CgroupStats | None) -> pb.MemoryUsage:
    if st is None:
        return pb.MemoryUsage(timestamp=time.time_ns())
    return pb.MemoryUsage(
        timestamp=st.timestamp,
        working_set_bytes=_u64(st.memory_working_set),
        available_bytes=_u64(st.memory_available),
        usage_bytes=_u64(st.memory_usage),
        rss_bytes=_u64(st.memory_rss),
        page_faults=_u64(st.page_faults),
        major_page_faults=_u64(st.major_page_faults),
    )


def _swap(st: CgroupStats | None) -> pb.SwapUsage:
    if st is None:
        return pb.SwapUsage(timestamp=time.time_ns())
    avail = None
    if st.swap_limit is not None and st.swap_usage is not None:
        avail = st.swap_limit - st.swap_usage
    return pb.SwapUsage(
        timestamp=st.timestamp,
        swap_usage_bytes=_u64(st.swap_usage),
        swap_available_bytes=_u64(avail),
    )


def container_stats(s: ContainerSample) -> pb.ContainerStats:
    c = s.container
    out = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=c.config.metadata,
            labels=c.config.labels,
            annotations=c.config.annotations,
        ),
        writable_layer=pb.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=pb.FilesystemIdentifier(mountpoint=s.fs_mountpoint),
            used_bytes=_u64(s.fs_bytes),
            inodes_used=_u64(s.fs_inodes),
        ),
    )
    if s.cgroup is not None:  # none for an exited container: no CPU or memory, as containerd
        out.cpu.CopyFrom(_cpu(s.cgroup, s.nano_cores))
        out.memory.CopyFrom(_memory(s.cgroup))
        out.swap.CopyFrom(_swap(s.cgroup))
    return out


def pod_stats(s: PodSample) -> pb.PodSandboxStats:
    pod = s.pod
    ifaces = [
        pb.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=_u64(i.rx_bytes),
            rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes),
            tx_errors=_u64(i.tx_errors),
        )
        for i in s.interfaces
    ]
    default = next((i for i in ifaces if i.name == "eth0"), ifaces[0] if ifaces else None)
    linux = pb.LinuxPodSandboxStats(
        cpu=_cpu(s.cgroup, s.nano_cores),
        memory=_memory(s.cgroup),
        network=pb.NetworkUsage(
            timestamp=time.time_ns(), default_interface=default, interfaces=ifaces
        ),
        process=pb.ProcessUsage(
            timestamp=time.time_ns(), process_count=_u64(s.cgroup.pids if s.cgroup else None)
        ),
        containers=[container_stats(c) for c in s.containers],
    )
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=pod.id,
            metadata=pod.config.metadata,
            labels=pod.config.labels,
            annotations=pod.config.annotations,
        ),
        linux=linux,
    )


def _metrics(rows: list[cadvisor.Row], ts: int) -> list[pb.Metric]:
    return [
        pb.Metric(
            name=name,
            timestamp=ts,
            metric_type=_TYPE[name],
            label_values=labels,
            value=pb.UInt64Value(value=value),
        )
        for name, labels, value in rows
    ]


def pod_metrics(s: PodSample) -> pb.PodSandboxMetrics:
    meta = s.pod.config.metadata
    ts = time.time_ns()
    now_s = ts // 1_000_000_000
    return pb.PodSandboxMetrics(
        pod_sandbox_id=s.pod.id,
        metrics=_metrics(cadvisor.pod_rows(s, now_s), ts),
        container_metrics=[
            pb.ContainerMetrics(
                container_id=cs.container.id,
                metrics=_metrics(cadvisor.container_rows(cs, meta.namespace, meta.name, now_s), ts),
            )
            for cs in s.containers
        ],
    )


class StatsCalls:
    SERVICE = "RuntimeService"

    def __init__(self, stats: StatsService) -> None:
        self.stats = stats

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Any
    ) -> pb.ContainerStatsResponse:
        s = await self.stats.container(request.container_id)
        return pb.ContainerStatsResponse(stats=container_stats(s))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Any
    ) -> pb.ListContainerStatsResponse:
        f = request.filter
        found = await self.stats.list_containers(f.id, f.pod_sandbox_id, dict(f.label_selector))
        return pb.ListContainerStatsResponse(stats=[container_stats(s) for s in found])

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Any
    ) -> pb.PodSandboxStatsResponse:
        s = await self.stats.pod(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=pod_stats(s))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Any
    ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter
        found = await self.stats.list_pods(f.id, dict(f.label_selector))
        return pb.ListPodSandboxStatsResponse(stats=[pod_stats(s) for s in found])

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Any
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=DESCRIPTORS)

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Any
    ) -> pb.ListPodSandboxMetricsResponse:
        found = await self.stats.list_pods(detail=True)
        return pb.ListPodSandboxMetricsResponse(pod_metrics=[pod_metrics(s) for s in found])
