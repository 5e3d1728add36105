"""cgroup v2 (unified hierarchy): every controller's files live in the one cgroup dir."""

from __future__ import annotations

import os

from crispy.stats.cgroups import CgroupStats, build, now_ns, read_int, read_keyed, read_limit


def read(cgroup_dir: str) -> CgroupStats | None:
    """The figures of the cgroup at `cgroup_dir` (a path under the v2 mount), or None
    when it does not exist."""
    if not os.path.isdir(cgroup_dir):
        return None

    def path(name: str) -> str:
        return os.path.join(cgroup_dir, name)

    timestamp = now_ns()
    # cpu.stat's usage_usec is there even with the cpu controller off (it is a core file).
    usage_usec = read_keyed(path("cpu.stat")).get("usage_usec")
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
    )
