"""One cgroup's figures, whatever the hierarchy version: the common record and the dispatch.

The version readers (`cgroup_v1`, `cgroup_v2`) read raw files; what is derived from them
(working set, available memory) is computed once here, the way cAdvisor does, so both
versions give kubelet the same meaning for the same numbers.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field

from crispy.system.cgroups import CGROUP_ROOT, CgroupVersion, cgroup_version, normalize_path

# v1 reports "no limit" as PAGE_COUNTER_MAX in bytes (9223372036854771712 with 4 KiB pages,
# a little different with other page sizes); nothing real comes near 2^60.
UNLIMITED_ABOVE = 1 << 60


@dataclass
class CgroupStats:
    timestamp: int  # ns since the epoch, when read
    cpu_usage_ns: int | None  # cumulative CPU time
    memory_usage: int | None  # bytes (v1 memory.usage_in_bytes / v2 memory.current)
    memory_working_set: int | None  # usage - inactive_file (never below 0), as cAdvisor
    memory_rss: int | None  # v1 total_rss / v2 anon
    memory_limit: int | None  # None when unlimited
    memory_available: int | None  # limit - working_set when limited, else None
    page_faults: int | None
    major_page_faults: int | None
    swap_usage: int | None  # v1 memsw.usage - usage; v2 memory.swap.current
    swap_limit: int | None  # swap alone (v1: memsw.limit - limit); None when unlimited
    pids: int | None  # pids.current
    extra: CgroupExtra | None = None  # read only for ListPodSandboxMetrics


Device = tuple[int, int]  # block device (major, minor)


@dataclass
class CgroupExtra:
    """The further figures cAdvisor's metrics show, read only when asked (they cost more
    files than kubelet's summary needs). None where this kernel or hierarchy has none."""

    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_ns: int | None = None
    cpu_period_us: int | None = None
    cpu_quota_us: int | None = None  # None when unlimited (cAdvisor shows no quota then)
    cpu_shares: int | None = None  # v2: cpu.weight mapped back to shares
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_kernel: int | None = None
    memory_max_usage: int | None = None
    memory_failcnt: int | None = None  # times usage hit the limit
    oom_kills: int | None = None
    # Spec limits as cAdvisor reads them; 0 means unlimited, as cAdvisor shows it.
    memory_reservation: int | None = None  # v1 soft_limit_in_bytes, v2 memory.min
    memory_swap_limit: int | None = None  # v1 memsw.limit_in_bytes, v2 memory.swap.max
    own_pgfault: int | None = None  # the cgroup's own faults, without its children
    own_pgmajfault: int | None = None
    pids_max: int | None = None  # 0 when unlimited
    io_bytes: dict[Device, dict[str, int]] = field(default_factory=dict)  # op -> bytes
    io_ops: dict[Device, dict[str, int]] = field(default_factory=dict)  # op -> requests
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu", "memory", "io"
    hugetlb: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # size -> use, max


@dataclass(frozen=True)
class Pressure:
    some_us: int  # total time some tasks stalled
    full_us: int | None  # total time all tasks stalled (no "full" line for cpu before 5.13)


def build(
    *,
    timestamp: int,
    cpu_usage_ns: int | None,
    memory_usage: int | None,
    inactive_file: int | None,
    memory_rss: int | None,
    memory_limit: int | None,
    page_faults: int | None,
    major_page_faults: int | None,
    swap_usage: int | None,
    swap_limit: int | None,
    pids: int | None,
    extra: CgroupExtra | None = None,
) -> CgroupStats:
    """The record from raw readings, deriving what kubelet's eviction manager reads."""
    working_set = memory_usage
    # cAdvisor: inactive file pages are reclaimable at no cost, so they are not "in use";
    # page cache can be counted in inactive_file but not (yet) in usage, hence the floor.
    if memory_usage is not None and inactive_file is not None:
        working_set = max(memory_usage - inactive_file, 0)
    available = None
    if memory_limit is not None and working_set is not None:
        available = max(memory_limit - working_set, 0)
    return CgroupStats(
        timestamp=timestamp,
        cpu_usage_ns=cpu_usage_ns,
        memory_usage=memory_usage,
        memory_working_set=working_set,
        memory_rss=memory_rss,
        memory_limit=memory_limit,
        memory_available=available,
        page_faults=page_faults,
        major_page_faults=major_page_faults,
        swap_usage=swap_usage,
        swap_limit=swap_limit,
        pids=pids,
        extra=extra,
    )


def read_text(path: str) -> str | None:
    """A cgroup file's content, or None when it is missing or its cgroup went away
    (a removed cgroup's open files answer ENODEV)."""
    # os-level calls: about half the cost of open() and a text wrapper, over the ~30
    # files a container's metrics read
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def read_int(path: str) -> int | None:
    """A single-value file; None when missing or unparsable."""
    text = read_text(path)
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None


def read_limit(path: str) -> int | None:
    """A limit file; None when missing or unlimited (v2 "max", v1's huge page-counter max)."""
    value = read_int(path)  # "max" does not parse: None
    return None if value is None or value > UNLIMITED_ABOVE else value


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file (`key value` lines: memory.stat, cpu.stat); {} when missing."""
    out: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_unlimited_zero(path: str) -> int | None:
    """A limit file as cAdvisor's spec shows it: 0 when unlimited, None when missing."""
    text = read_text(path)
    if text is None:
        return None
    value = read_limit(path)
    return 0 if value is None else value


def parse_pressure(text: str | None) -> Pressure | None:
    """A PSI file (`some avg10=.. avg60=.. avg300=.. total=<us>`, then a `full` line)."""
    totals: dict[str, int] = {}
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "total" and value.isdigit():
                totals[kind] = int(value)
    if "some" not in totals:
        return None
    return Pressure(totals["some"], totals.get("full"))


def read_pressure(cgroup_dir: str) -> dict[str, Pressure]:
    """The cgroup's cpu, memory and io PSI totals (v2 files; absent without PSI)."""
    out = {}
    for res in ("cpu", "memory", "io"):
        p = parse_pressure(read_text(os.path.join(cgroup_dir, f"{res}.pressure")))
        if p is not None:
            out[res] = p
    return out


def hugetlb_sizes(cgroup_dir: str, suffix: str) -> list[str]:
    """Huge page sizes ("2MB", "1GB") the hugetlb controller has files for in the dir
    (hugetlb.<size><suffix>; the .rsvd. reservation files have one dot more)."""
    try:
        names = os.listdir(cgroup_dir)
    except OSError:
        return []
    return sorted(
        n[len("hugetlb.") : -len(suffix)]
        for n in names
        if n.startswith("hugetlb.") and n.endswith(suffix) and n.count(".") == 2
    )


def now_ns() -> int:
    return time.time_ns()


def read(
    cgroup_path: str,
    root: str = CGROUP_ROOT,
    version: CgroupVersion | None = None,
    extra: bool = False,
) -> CgroupStats | None:
    """The figures of the cgroup at `cgroup_path` inside the hierarchy ("/crispy/<pod>/<ctr>",
    as runc's cgroupsPath with the cgroupfs driver); None when it does not exist (the
    container is gone). A missing file leaves its fields None. With `extra`, the
    CgroupExtra figures of the metrics are read as well."""
    if not cgroup_path:
        # An empty path would normalise to the root cgroup: the whole host, never a pod's.
        return None
    rel = normalize_path(cgroup_path).lstrip("/")
    if version is None:
        version = _version(root)
    # Imported here: the version readers import `build` and the file helpers from this module.
    if version is CgroupVersion.V2:
        from crispy.stats import cgroup_v2

        return cgroup_v2.read(os.path.join(root, rel), extra)
    from crispy.stats import cgroup_v1

    return cgroup_v1.read(root, rel, extra)


def procs_dir(
    cgroup_path: str, root: str = CGROUP_ROOT, version: CgroupVersion | None = None
) -> str | None:
    """A directory of the cgroup whose cgroup.procs (and its children's) list the cgroup's
    processes: the cgroup itself on v2, one controller's copy of it on v1."""
    if not cgroup_path:
        return None
    rel = normalize_path(cgroup_path).lstrip("/")
    if (version or _version(root)) is CgroupVersion.V2:
        d = os.path.join(root, rel)
        return d if os.path.isdir(d) else None
    for name in ("pids", "memory", "cpuacct", "cpu", "cpu,cpuacct"):
        d = os.path.join(root, name, rel)
        if os.path.isdir(d):
            return d
    return None


@functools.lru_cache(maxsize=8)
def _version(root: str) -> CgroupVersion:
    """The hierarchy version, detected once per root: it can't change while crispyd runs."""
    return cgroup_version(root)
