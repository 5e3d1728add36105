"""A cgroup's processes as /proc shows them: how many, their threads, open files, sockets.

The processes are those in cgroup.procs of the cgroup and its children (a pod's cgroup
holds none itself: they sit in its containers' cgroups). Processes exit while being
counted; whatever vanishes is skipped, not an error. Reading another pid namespace's
/proc/<pid>/fd needs root, as crispyd runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"


@dataclass(frozen=True)
class ProcStats:
    processes: int
    threads: int
    fds: int
    sockets: int


def cgroup_pids(cgroup_dir: str) -> list[int]:
    """The pids in cgroup.procs of `cgroup_dir` and every cgroup below it."""
    pids: list[int] = []
    for d, _, _ in os.walk(cgroup_dir):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids.extend(int(line) for line in f if line.strip())
        except (OSError, ValueError):
            continue
    return pids


def _count_fds(pid: int, proc: str) -> tuple[int, int] | None:
    fd_dir = os.path.join(proc, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None  # gone
    sockets = 0
    for name in names:
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith("socket:"):
                sockets += 1
        except OSError:
            continue  # closed meanwhile
    return len(names), sockets


def count(pids: list[int], proc: str = PROC) -> ProcStats:
    """Processes still alive among `pids`, with their threads (/proc/<pid>/task), open
    file descriptors and, of those, sockets, as cAdvisor counts them."""
    processes = threads = fds = sockets = 0
    for pid in pids:
        opened = _count_fds(pid, proc)
        if opened is None:
            continue
        try:
            tasks = len(os.listdir(os.path.join(proc, str(pid), "task")))
        except OSError:
            continue
        processes += 1
        threads += tasks
        fds += opened[0]
        sockets += opened[1]
    return ProcStats(processes, threads, fds, sockets)


def soft_nofile(pid: int, proc: str = PROC) -> int | None:
    """The soft "Max open files" of `pid` (/proc/<pid>/limits); None when unlimited or gone
    (a metric value can't be cAdvisor's -1)."""
    try:
        with open(os.path.join(proc, str(pid), "limits")) as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdigit() else None
    return None
