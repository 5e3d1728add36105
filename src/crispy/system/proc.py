"""Reading /proc: whether a pid is still the process crispy started."""

from __future__ import annotations


def start_time(pid: int) -> int:
    """The process's start time in clock ticks (stat field 22), 0 if it is gone or a zombie.
    With the pid, it names one process: a reused pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return 0
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0
