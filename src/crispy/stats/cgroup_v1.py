"""cgroup v1: each controller is its own hierarchy under the root (cpuacct, memory, pids).

The same cgroup path is looked up in each controller's hierarchy; a controller the
cgroup is missing from leaves its fields None.
"""

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

# cpuacct is often co-mounted with cpu; systemd mounts "cpu,cpuacct" and symlinks both
# single names to it, other setups mount either name alone (or the other order).
_CPUACCT = ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
_CPU = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
# Where a hybrid host mounts its v2 hierarchy; runc places each container there too, and
# PSI (pressure) files exist only in v2.
UNIFIED = "unified"


def _controller_dir(root: str, names: tuple[str, ...], rel: str) -> str | None:
    for name in names:
        d = os.path.join(root, name, rel)
        if os.path.isdir(d):
            return d
    return None


def _stat(mem: dict[str, int], key: str) -> int | None:
    # The total_* figures include the child cgroups (with use_hierarchy, always on in
    # recent kernels); a container's processes may sit in children its runtime made.
    return mem.get("total_" + key, mem.get(key))


def parse_blkio(text: str | None) -> dict[Device, dict[str, int]]:
    """A blkio recursive file: `major:minor Op value` lines (Read, Write, Sync, Async,
    Discard, Total per device), then a `Total n` line over all devices."""
    out: dict[Device, dict[str, int]] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        dev, op, value = parts
        major, sep, minor = dev.partition(":")
        if not (sep and major.isdigit() and minor.isdigit() and value.isdigit()):
            continue
        out.setdefault((int(major), int(minor)), {})[op] = int(value)
    return out


def _blkio(blkio_dir: str, what: str) -> dict[Device, dict[str, int]]:
    # The throttle files are there with blk-throttle built in (as on every distro kernel);
    # kernels without it had CFQ's, under the plain name.
    text = read_text(os.path.join(blkio_dir, f"blkio.throttle.{what}_recursive"))
    if text is None:
        text = read_text(os.path.join(blkio_dir, f"blkio.{what}_recursive"))
    return parse_blkio(text)


def _extra(
    root: str,
    rel: str,
    acct: str | None,
    mem_dir: str | None,
    pids: str | None,
    mem: dict[str, int],
) -> CgroupExtra:
    x = CgroupExtra()
    if acct:
        x.cpu_user_ns = read_int(os.path.join(acct, "cpuacct.usage_user"))
        x.cpu_system_ns = read_int(os.path.join(acct, "cpuacct.usage_sys"))
    cpu = _controller_dir(root, _CPU, rel)
    if cpu:
        st = read_keyed(os.path.join(cpu, "cpu.stat"))
        x.cfs_periods = st.get("nr_periods")
        x.cfs_throttled_periods = st.get("nr_throttled")
        x.cfs_throttled_ns = st.get("throttled_time")
        x.cpu_period_us = read_int(os.path.join(cpu, "cpu.cfs_period_us"))
        quota = read_int(os.path.join(cpu, "cpu.cfs_quota_us"))
        x.cpu_quota_us = quota if quota is not None and quota > 0 else None  # -1: none
        x.cpu_shares = read_int(os.path.join(cpu, "cpu.shares"))
    if mem_dir:
        x.memory_cache = _stat(mem, "cache")
        x.memory_mapped_file = _stat(mem, "mapped_file")
        x.own_pgfault = mem.get("pgfault")
        x.own_pgmajfault = mem.get("pgmajfault")
        x.memory_kernel = read_int(os.path.join(mem_dir, "memory.kmem.usage_in_bytes"))
        x.memory_max_usage = read_int(os.path.join(mem_dir, "memory.max_usage_in_bytes"))
        x.memory_failcnt = read_int(os.path.join(mem_dir, "memory.failcnt"))
        # oom_kill is in oom_control since 4.13
        x.oom_kills = read_keyed(os.path.join(mem_dir, "memory.oom_control")).get("oom_kill")
        x.memory_reservation = read_unlimited_zero(
            os.path.join(mem_dir, "memory.soft_limit_in_bytes")
        )
        x.memory_swap_limit = read_unlimited_zero(
            os.path.join(mem_dir, "memory.memsw.limit_in_bytes")
        )
    if pids:
        x.pids_max = read_unlimited_zero(os.path.join(pids, "pids.max"))
    blkio = _controller_dir(root, ("blkio",), rel)
    if blkio:
        x.io_bytes = _blkio(blkio, "io_service_bytes")
        x.io_ops = _blkio(blkio, "io_serviced")
    huge = _controller_dir(root, ("hugetlb",), rel)
    if huge:
        for size in hugetlb_sizes(huge, ".usage_in_bytes"):
            use = read_int(os.path.join(huge, f"hugetlb.{size}.usage_in_bytes"))
            if use is not None:
                top = read_int(os.path.join(huge, f"hugetlb.{size}.max_usage_in_bytes"))
                x.hugetlb[size] = (use, top)
    unified = os.path.join(root, UNIFIED, rel)
    if os.path.isdir(unified):
        x.pressure = read_pressure(unified)
    return x


def read(root: str, rel: str, extra: bool = False) -> CgroupStats | None:
    """The figures of cgroup `rel` (relative to each controller's mount) under `root`,
    or None when it exists in none of the controllers read."""
    cpu_dir = _controller_dir(root, _CPUACCT, rel)
    mem_dir = _controller_dir(root, ("memory",), rel)
    pids_dir = _controller_dir(root, ("pids",), rel)
    if cpu_dir is None and mem_dir is None and pids_dir is None:
        return None

    timestamp = now_ns()
    cpu = read_int(os.path.join(cpu_dir, "cpuacct.usage")) if cpu_dir else None
    usage = limit = swap_usage = swap_limit = None
    mem: dict[str, int] = {}
    if mem_dir:
        usage = read_int(os.path.join(mem_dir, "memory.usage_in_bytes"))
        limit = read_limit(os.path.join(mem_dir, "memory.limit_in_bytes"))
        mem = read_keyed(os.path.join(mem_dir, "memory.stat"))
        # memsw (memory+swap) files exist only with swap accounting on; swap alone is
        # the difference, so it means the same as v2's memory.swap.* figures.
        memsw = read_int(os.path.join(mem_dir, "memory.memsw.usage_in_bytes"))
        if memsw is not None and usage is not None:
            swap_usage = max(memsw - usage, 0)
        memsw_limit = read_limit(os.path.join(mem_dir, "memory.memsw.limit_in_bytes"))
        if memsw_limit is not None and limit is not None:
            swap_limit = max(memsw_limit - limit, 0)
    return build(
        timestamp=timestamp,
        cpu_usage_ns=cpu,
        memory_usage=usage,
        inactive_file=_stat(mem, "inactive_file"),
        memory_rss=_stat(mem, "rss"),
        memory_limit=limit,
        page_faults=_stat(mem, "pgfault"),
        major_page_faults=_stat(mem, "pgmajfault"),
        swap_usage=swap_usage,
        swap_limit=swap_limit,
        pids=read_int(os.path.join(pids_dir, "pids.current")) if pids_dir else None,
        extra=_extra(root, rel, cpu_dir, mem_dir, pids_dir, mem) if extra else None,
    )
