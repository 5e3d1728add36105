"""One cgroup's figures, whatever the hierarchy version: the common record and the dispatch.

The version readers (`cgroup_v1`, `cgroup_v2`) read raw files; what is derived from them
(working set, available memory) is computed once here, the way cAdvisor does, so both
versions give kubelet the same meaning for the same numbers.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

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
    )


def read_text(path: str) -> str | None:
    """A cgroup file's content, or None when it is missing or its cgroup went away
    (a removed cgroup's open files answer ENODEV)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


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


def now_ns() -> int:
    return time.time_ns()


def read(
    cgroup_path: str, root: str = CGROUP_ROOT, version: CgroupVersion | None = None
) -> CgroupStats | None:
    """The figures of the cgroup at `cgroup_path` inside the hierarchy ("/crispy/<pod>/<ctr>",
    as runc's cgroupsPath with the cgroupfs driver); None when it does not exist (the
    container is gone). A missing file leaves its fields None."""
    if not cgroup_path:
        # An empty path would normalise to the root cgroup: the whole host, never a pod's.
        return None
    rel = normalize_path(cgroup_path).lstrip("/")
    if version is None:
        version = _version(root)
    # Imported here: the version readers import `build` and the file helpers from this module.
    if version is CgroupVersion.V2:
        from crispy.stats import cgroup_v2

        return cgroup_v2.read(os.path.join(root, rel))
    from crispy.stats import cgroup_v1

    return cgroup_v1.read(root, rel)


@functools.lru_cache(maxsize=8)
def _version(root: str) -> CgroupVersion:
    """The hierarchy version, detected once per root: it can't change while crispyd runs."""
    return cgroup_version(root)
