"""cgroup v1: each controller is its own hierarchy under the root (cpuacct, memory, pids).

The same cgroup path is looked up in each controller's hierarchy; a controller the
cgroup is missing from leaves its fields None.
"""

from __future__ import annotations

import os

from crispy.stats.cgroups import CgroupStats, build, now_ns, read_int, read_keyed, read_limit

# cpuacct is often co-mounted with cpu; systemd mounts "cpu,cpuacct" and symlinks both
# single names to it, other setups mount either name alone (or the other order).
_CPUACCT = ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")


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


def read(root: str, rel: str) -> CgroupStats | None:
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
    )
