"""cgroup v2 (unified hierarchy): every controller's files live in the one cgroup dir."""

from __future__ import annotations

import os

from crispy.stats.cgroups import (
    CgroupExtra,
    CgroupStats,
    Device,
    build,
    hugetlb_sizes,
    now_ns,
    read_int,
    read_keyed,
    read_limit,
    read_pressure,
    read_text,
    read_unlimited_zero,
)

# io.stat keys, by the operation names cAdvisor takes from v1 (as runc maps them)
_IO_BYTES = {"rbytes": "Read", "wbytes": "Write", "dbytes": "Discard"}
_IO_OPS = {"rios": "Read", "wios": "Write", "dios": "Discard"}


def parse_io_stat(
    text: str | None,
) -> tuple[dict[Device, dict[str, int]], dict[Device, dict[str, int]]]:
    """io.stat (`major:minor rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..` per
    device) as (bytes, requests) by device and operation."""
    nbytes: dict[Device, dict[str, int]] = {}
    ops: dict[Device, dict[str, int]] = {}
    for line in (text or "").splitlines():
        dev, *items = line.split()
        major, sep, minor = dev.partition(":")
        if not (sep and major.isdigit() and minor.isdigit()):
            continue
        key = (int(major), int(minor))
        for item in items:
            name, _, value = item.partition("=")
            if not value.isdigit():
                continue
            if name in _IO_BYTES:
                nbytes.setdefault(key, {})[_IO_BYTES[name]] = int(value)
            elif name in _IO_OPS:
                ops.setdefault(key, {})[_IO_OPS[name]] = int(value)
    return nbytes, ops


def weight_to_shares(weight: int) -> int:
    """cpu.weight [1, 10000] back to v1 shares [2, 262144]: the inverse of runc's
    shares-to-weight mapping, as cAdvisor shows container_spec_cpu_shares on v2."""
    return 2 + (weight - 1) * 262142 // 9999


def _extra(d: str, cpu: dict[str, int], mem: dict[str, int]) -> CgroupExtra:
    def path(name: str) -> str:
        return os.path.join(d, name)

    def us_to_ns(key: str) -> int | None:
        v = cpu.get(key)
        return None if v is None else v * 1000

    x = CgroupExtra(
        cpu_user_ns=us_to_ns("user_usec"),
        cpu_system_ns=us_to_ns("system_usec"),
        # the throttling keys are there only with the cpu controller enabled
        cfs_periods=cpu.get("nr_periods"),
        cfs_throttled_periods=cpu.get("nr_throttled"),
        cfs_throttled_ns=us_to_ns("throttled_usec"),
        memory_cache=mem.get("file"),
        memory_mapped_file=mem.get("file_mapped"),
        memory_kernel=mem.get("kernel"),  # 5.18+; older kernels have no one figure for it
        memory_max_usage=read_int(path("memory.peak")),  # 5.19+
        own_pgfault=mem.get("pgfault"),  # v2's memory.stat has no per-cgroup split
        own_pgmajfault=mem.get("pgmajfault"),
        memory_reservation=read_unlimited_zero(path("memory.min")),
        memory_swap_limit=read_unlimited_zero(path("memory.swap.max")),
        pids_max=read_unlimited_zero(path("pids.max")),
        pressure=read_pressure(d),
    )
    events = read_keyed(path("memory.events"))
    x.memory_failcnt = events.get("max")  # times usage hit memory.max
    x.oom_kills = events.get("oom_kill")
    cpu_max = (read_text(path("cpu.max")) or "").split()
    if len(cpu_max) == 2 and cpu_max[1].isdigit():
        x.cpu_period_us = int(cpu_max[1])
        x.cpu_quota_us = int(cpu_max[0]) if cpu_max[0].isdigit() else None  # "max"
    weight = read_int(path("cpu.weight"))
    if weight is not None and 1 <= weight <= 10000:
        x.cpu_shares = weight_to_shares(weight)
    x.io_bytes, x.io_ops = parse_io_stat(read_text(path("io.stat")))
    for size in hugetlb_sizes(d, ".current"):
        use = read_int(path(f"hugetlb.{size}.current"))
        if use is not None:
            x.hugetlb[size] = (use, None)  # v2 keeps no high-water mark
    return x


def read(cgroup_dir: str, extra: bool = False) -> CgroupStats | None:
    """The figures of the cgroup at `cgroup_dir` (a path under the v2 mount), or None
    when it does not exist."""
    if not os.path.isdir(cgroup_dir):
        return None

    def path(name: str) -> str:
        return os.path.join(cgroup_dir, name)

    timestamp = now_ns()
    # cpu.stat's usage_usec is there even with the cpu controller off (it is a core file).
    cpu = read_keyed(path("cpu.stat"))
    usage_usec = cpu.get("usage_usec")
    mem = read_keyed(path("memory.stat"))
    return build(
        timestamp=timestamp,
        cpu_usage_ns=None if usage_usec is None else usage_usec * 1000,
        memory_usage=read_int(path("memory.current")),
        inactive_file=mem.get("inactive_file"),
        memory_rss=mem.get("anon"),
        memory_limit=read_limit(path("memory.max")),
        page_faults=mem.get("pgfault"),
        major_page_faults=mem.get("pgmajfault"),
        swap_usage=read_int(path("memory.swap.current")),
        swap_limit=read_limit(path("memory.swap.max")),
        pids=read_int(path("pids.current")),
        extra=_extra(cgroup_dir, cpu, mem) if extra else None,
    )
