"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors, ListPodSandboxMetrics."""

from __future__ import annotations

import time
from typing import Any

from crispy.cri.api import pb
from crispy.stats.cgroups import CgroupStats
from crispy.stats.service import ContainerSample, PodSample, StatsService

# cAdvisor's names, as kubelet's /metrics/cadvisor shows them by default.
_BASE = ["container", "id", "image", "name", "namespace", "pod"]
_NET = ["interface", "namespace", "pod"]
DESCRIPTORS: list[tuple[str, str, list[str], Any]] = [
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        _BASE,
        pb.COUNTER,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        _BASE,
        pb.GAUGE,
    ),
    ("container_memory_working_set_bytes", "Current working set in bytes.", _BASE, pb.GAUGE),
    ("container_memory_rss", "Size of RSS in bytes.", _BASE, pb.GAUGE),
    ("container_memory_swap", "Container swap usage in bytes.", _BASE, pb.GAUGE),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", _BASE, pb.GAUGE),
    (
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        _BASE,
        pb.COUNTER,
    ),
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        _BASE,
        pb.GAUGE,
    ),
    (
        "container_fs_inodes_total",
        "Number of inodes used by the container on this filesystem.",
        _BASE,
        pb.GAUGE,
    ),
    ("container_processes", "Number of processes running inside the container.", _BASE, pb.GAUGE),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        _BASE,
        pb.GAUGE,
    ),
    ("container_last_seen", "Last time a container was seen by the exporter", _BASE, pb.GAUGE),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        _NET,
        pb.COUNTER,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        _NET,
        pb.COUNTER,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        _NET,
        pb.COUNTER,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        _NET,
        pb.COUNTER,
    ),
]
_TYPE = {name: kind for name, _, _, kind in DESCRIPTORS}


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
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=c.config.metadata,
            labels=c.config.labels,
            annotations=c.config.annotations,
        ),
        cpu=_cpu(s.cgroup, s.nano_cores),
        memory=_memory(s.cgroup),
        swap=_swap(s.cgroup),
        writable_layer=pb.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=pb.FilesystemIdentifier(mountpoint=s.fs_mountpoint),
            used_bytes=_u64(s.fs_bytes),
            inodes_used=_u64(s.fs_inodes),
        ),
    )


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


def _metric(name: str, labels: list[str], value: int | None, ts: int) -> pb.Metric | None:
    if value is None:
        return None
    return pb.Metric(
        name=name,
        timestamp=ts,
        metric_type=_TYPE[name],
        label_values=labels,
        value=pb.UInt64Value(value=max(0, int(value))),
    )


def pod_metrics(s: PodSample) -> pb.PodSandboxMetrics:
    meta = s.pod.config.metadata
    ts = time.time_ns()
    out = pb.PodSandboxMetrics(pod_sandbox_id=s.pod.id)
    for i in s.interfaces:
        labels = [i.name, meta.namespace, meta.name]
        for name, v in (
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_errors_total", i.tx_errors),
        ):
            m = _metric(name, labels, v, ts)
            if m is not None:
                out.metrics.append(m)
    for cs in s.containers:
        c = cs.container
        st = cs.cgroup
        labels = [
            c.config.metadata.name,
            c.id,
            c.config.image.image,
            c.name,
            meta.namespace,
            meta.name,
        ]
        values: list[tuple[str, int | None]] = [
            (
                "container_cpu_usage_seconds_total",
                st.cpu_usage_ns // 10**9 if st and st.cpu_usage_ns else None,
            ),
            ("container_memory_usage_bytes", st.memory_usage if st else None),
            ("container_memory_working_set_bytes", st.memory_working_set if st else None),
            ("container_memory_rss", st.memory_rss if st else None),
            ("container_memory_swap", st.swap_usage if st else None),
            ("container_spec_memory_limit_bytes", (st.memory_limit or 0) if st else None),
            ("container_memory_failures_total", st.page_faults if st else None),
            ("container_fs_usage_bytes", cs.fs_bytes),
            ("container_fs_inodes_total", cs.fs_inodes),
            ("container_processes", st.pids if st else None),
            ("container_start_time_seconds", c.started_at // 10**9 if c.started_at else None),
            ("container_last_seen", ts // 10**9),
        ]
        cm = pb.ContainerMetrics(container_id=c.id)
        for name, value in values:
            m = _metric(name, labels, value, ts)
            if m is not None:
                cm.metrics.append(m)
        out.container_metrics.append(cm)
    return out


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
        return pb.ListMetricDescriptorsResponse(
            descriptors=[
                pb.MetricDescriptor(name=n, help=h, label_keys=labels)
                for n, h, labels, _ in DESCRIPTORS
            ]
        )

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Any
    ) -> pb.ListPodSandboxMetricsResponse:
        found = await self.stats.list_pods()
        return pb.ListPodSandboxMetricsResponse(pod_metrics=[pod_metrics(s) for s in found])
