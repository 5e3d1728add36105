"""cAdvisor's metric families, as kubelet's /metrics/cadvisor serves them, and the rows
(family, label values, value) that a container's or a pod's sample gives for them.

Names, help texts and label keys are cAdvisor's (metrics/prometheus.go); the set is the
one cri-tools' critest expects of ListMetricDescriptors. Every family has kubelet's base
labels first, then its own. A pod's rows are its cgroup's (and its network namespace's)
with empty container, image and name, as cAdvisor shows a pod's cgroup. CRI carries each
value as a uint64: seconds are whole seconds (as containerd and CRI-O send them), and what
cAdvisor shows as -1 (unlimited) is left out. A figure the kernel doesn't give is left out,
never made up.
"""

from __future__ import annotations

from dataclasses import dataclass

from crispy.stats import devices
from crispy.stats.cgroups import CgroupExtra, CgroupStats
from crispy.stats.procs import ProcStats
from crispy.stats.service import ContainerSample, PodSample

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    counter: bool
    extra_labels: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_LABELS + self.extra_labels


def _counter(name: str, help: str, *extra: str) -> Family:
    return Family(name, help, True, extra)


def _gauge(name: str, help: str, *extra: str) -> Family:
    return Family(name, help, False, extra)


FAMILIES: tuple[Family, ...] = (
    _counter(
        "container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", "cpu"
    ),
    _counter("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds."),
    _counter(
        "container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds."
    ),
    _counter("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals."),
    _counter("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals."),
    _counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
    ),
    _gauge("container_memory_cache", "Number of bytes of page cache memory."),
    _gauge("container_memory_rss", "Size of RSS in bytes."),
    _gauge("container_memory_kernel_usage", "Size of kernel memory allocated in bytes."),
    _gauge("container_memory_mapped_file", "Size of memory mapped files in bytes."),
    _gauge("container_memory_swap", "Container swap usage in bytes."),
    _counter("container_memory_failcnt", "Number of memory usage hits limits"),
    _gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    _gauge("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes"),
    _gauge("container_memory_working_set_bytes", "Current working set in bytes."),
    _counter(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        "failure_type",
        "scope",
    ),
    _counter(
        "container_oom_events_total", "Count of out of memory events observed for the container"
    ),
    _gauge("container_hugetlb_usage_bytes", "Current hugepage usage in bytes", "pagesize"),
    _gauge(
        "container_hugetlb_max_usage_bytes", "Maximum hugepage usage recorded in bytes", "pagesize"
    ),
    _counter(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
    ),
    _counter(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
    ),
    _counter(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory "
        "congestion.",
    ),
    _counter(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
    ),
    _counter(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
    ),
    _counter(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
    ),
    _gauge("container_fs_inodes_free", "Number of available Inodes", "device"),
    _gauge("container_fs_inodes_total", "Number of Inodes", "device"),
    _gauge(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        "device",
    ),
    _gauge(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        "device",
    ),
    _counter("container_fs_reads_bytes_total", "Cumulative count of bytes read", "device"),
    _counter("container_fs_reads_total", "Cumulative count of reads completed", "device"),
    _counter("container_fs_writes_bytes_total", "Cumulative count of bytes written", "device"),
    _counter("container_fs_writes_total", "Cumulative count of writes completed", "device"),
    _counter(
        "container_blkio_device_usage_total",
        "Blkio Device bytes usage",
        "device",
        "major",
        "minor",
        "operation",
    ),
    _counter(
        "container_network_receive_bytes_total", "Cumulative count of bytes received", "interface"
    ),
    _counter(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        "interface",
    ),
    _counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        "interface",
    ),
    _counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        "interface",
    ),
    _counter(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        "interface",
    ),
    _counter(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        "interface",
    ),
    _counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        "interface",
    ),
    _counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        "interface",
    ),
    _gauge("container_processes", "Number of processes running inside the container."),
    _gauge("container_file_descriptors", "Number of open file descriptors for the container."),
    _gauge("container_sockets", "Number of open sockets for the container."),
    _gauge("container_threads", "Number of threads running inside the container"),
    _gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
    ),
    _gauge(
        "container_ulimits_soft",
        "Soft ulimit values for the container root process. Unlimited if -1, except priority "
        "and nice",
        "ulimit",
    ),
    _gauge("container_spec_cpu_period", "CPU period of the container."),
    _gauge("container_spec_cpu_quota", "CPU quota of the container."),
    _gauge("container_spec_cpu_shares", "CPU share of the container."),
    _gauge("container_spec_memory_limit_bytes", "Memory limit for the container."),
    _gauge(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation limit for the container.",
    ),
    _gauge("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container."),
    _gauge(
        "container_start_time_seconds", "Start time of the container since unix epoch in seconds."
    ),
    _gauge("container_last_seen", "Last time a container was seen by the exporter"),
)
BY_NAME = {f.name: f for f in FAMILIES}

# (family name, the base label values then the family's own, value)
Row = tuple[str, tuple[str, ...], int]


class _Rows:
    """Collects rows for one label base, leaving out what has no value."""

    def __init__(self, base: tuple[str, ...]) -> None:
        self.base = base
        self.rows: list[Row] = []

    def add(self, name: str, value: int | None, *extra: str) -> None:
        assert len(extra) == len(BY_NAME[name].extra_labels), name
        if value is not None and value >= 0:
            self.rows.append((name, self.base + extra, value))


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // 1_000_000_000


def _cgroup(out: _Rows, st: CgroupStats | None, procs: ProcStats | None) -> None:
    if st is None:
        return
    x = st.extra or CgroupExtra()
    out.add("container_cpu_usage_seconds_total", _seconds(st.cpu_usage_ns), "total")
    out.add("container_cpu_user_seconds_total", _seconds(x.cpu_user_ns))
    out.add("container_cpu_system_seconds_total", _seconds(x.cpu_system_ns))
    out.add("container_cpu_cfs_periods_total", x.cfs_periods)
    out.add("container_cpu_cfs_throttled_periods_total", x.cfs_throttled_periods)
    out.add("container_cpu_cfs_throttled_seconds_total", _seconds(x.cfs_throttled_ns))
    out.add("container_spec_cpu_period", x.cpu_period_us)
    out.add("container_spec_cpu_quota", x.cpu_quota_us)
    out.add("container_spec_cpu_shares", x.cpu_shares)

    out.add("container_memory_usage_bytes", st.memory_usage)
    out.add("container_memory_working_set_bytes", st.memory_working_set)
    out.add("container_memory_rss", st.memory_rss)
    out.add("container_memory_cache", x.memory_cache)
    out.add("container_memory_kernel_usage", x.memory_kernel)
    out.add("container_memory_mapped_file", x.memory_mapped_file)
    out.add("container_memory_swap", st.swap_usage)
    out.add("container_memory_max_usage_bytes", x.memory_max_usage)
    out.add("container_memory_failcnt", x.memory_failcnt)
    out.add("container_oom_events_total", x.oom_kills)
    failures = "container_memory_failures_total"
    out.add(failures, x.own_pgfault, "pgfault", "container")
    out.add(failures, x.own_pgmajfault, "pgmajfault", "container")
    out.add(failures, st.page_faults, "pgfault", "hierarchy")
    out.add(failures, st.major_page_faults, "pgmajfault", "hierarchy")
    if st.memory_usage is not None:  # the memory controller is there: 0 is "no limit"
        out.add("container_spec_memory_limit_bytes", st.memory_limit or 0)
    out.add("container_spec_memory_reservation_limit_bytes", x.memory_reservation)
    out.add("container_spec_memory_swap_limit_bytes", x.memory_swap_limit)

    for size, (use, top) in sorted(x.hugetlb.items()):
        out.add("container_hugetlb_usage_bytes", use, size)
        out.add("container_hugetlb_max_usage_bytes", top, size)
    for res, p in sorted(x.pressure.items()):
        out.add(f"container_pressure_{res}_waiting_seconds_total", p.some_us // 1_000_000)
        if p.full_us is not None:
            out.add(f"container_pressure_{res}_stalled_seconds_total", p.full_us // 1_000_000)

    for (major, minor), ops in sorted(x.io_bytes.items()):
        dev = devices.block_device_name(major, minor)
        for op, value in ops.items():
            out.add("container_blkio_device_usage_total", value, dev, str(major), str(minor), op)
        out.add("container_fs_reads_bytes_total", ops.get("Read"), dev)
        out.add("container_fs_writes_bytes_total", ops.get("Write"), dev)
    for (major, minor), ops in sorted(x.io_ops.items()):
        dev = devices.block_device_name(major, minor)
        out.add("container_fs_reads_total", ops.get("Read"), dev)
        out.add("container_fs_writes_total", ops.get("Write"), dev)

    if procs is not None:
        out.add("container_processes", procs.processes)
        out.add("container_threads", procs.threads)
        out.add("container_file_descriptors", procs.fds)
        out.add("container_sockets", procs.sockets)
    out.add("container_threads_max", x.pids_max)


def container_rows(s: ContainerSample, namespace: str, pod: str, now_s: int) -> list[Row]:
    c = s.container
    out = _Rows((c.config.metadata.name, c.id, c.config.image.image, c.name, namespace, pod))
    _cgroup(out, s.cgroup, s.processes)
    cap = s.fs_capacity
    dev = cap.device if cap else ""
    out.add("container_fs_usage_bytes", s.fs_bytes, dev)
    if cap is not None:
        out.add("container_fs_limit_bytes", cap.size_bytes, dev)
        out.add("container_fs_inodes_total", cap.inodes, dev)
        out.add("container_fs_inodes_free", cap.inodes_free, dev)
    out.add("container_ulimits_soft", s.nofile, "max_open_files")
    out.add("container_start_time_seconds", _seconds(c.started_at) if c.started_at else None)
    out.add("container_last_seen", now_s)
    return out.rows


def pod_rows(s: PodSample, now_s: int) -> list[Row]:
    meta = s.pod.config.metadata
    out = _Rows(("", s.pod.id, "", "", meta.namespace, meta.name))
    _cgroup(out, s.cgroup, s.processes)
    for i in s.interfaces:
        out.add("container_network_receive_bytes_total", i.rx_bytes, i.name)
        out.add("container_network_receive_packets_total", i.rx_packets, i.name)
        out.add("container_network_receive_packets_dropped_total", i.rx_dropped, i.name)
        out.add("container_network_receive_errors_total", i.rx_errors, i.name)
        out.add("container_network_transmit_bytes_total", i.tx_bytes, i.name)
        out.add("container_network_transmit_packets_total", i.tx_packets, i.name)
        out.add("container_network_transmit_packets_dropped_total", i.tx_dropped, i.name)
        out.add("container_network_transmit_errors_total", i.tx_errors, i.name)
    out.add("container_start_time_seconds", _seconds(s.pod.created_at))
    out.add("container_last_seen", now_s)
    return out.rows
