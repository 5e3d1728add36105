"""Interface counters of a pod's network namespace, as `/proc/net/dev` shows them inside it.

A pinned netns has no process in it whose /proc/<pid>/net/dev could be read, so a thread
joins the namespace with setns(2) and reads its own /proc/thread-self/net/dev. setns
changes only the calling thread; that thread is a fresh one that ends right after, so
neither the event loop nor a pooled worker thread (asyncio.to_thread reuses them) is
ever left in a pod's namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from dataclasses import dataclass

from crispy.system.ns import CLONE_NEWNET

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class IfStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse_net_dev(text: str) -> list[IfStats]:
    """Every interface but `lo` in /proc/net/dev's format: two header lines, then
    `name: rx bytes packets errs drop fifo frame compressed multicast tx bytes packets errs
    drop fifo colls carrier compressed`."""
    out = []
    for line in text.splitlines()[2:]:
        # Names cannot hold ':' (dev_valid_name), and wide counters may touch the colon.
        name, sep, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not sep or len(fields) < 16 or name == "lo":
            continue
        try:
            out.append(
                IfStats(name, int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10]))
            )
        except ValueError:
            continue
    return out


def _read_in_netns(netns_path: str) -> str | None:
    try:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            # EINVAL: not a netns any more (the pin was unmounted, an empty file stays).
            if err == errno.EINVAL:
                return None
            raise OSError(err, os.strerror(err), netns_path)
    finally:
        os.close(fd)
    with open("/proc/thread-self/net/dev") as f:
        return f.read()


def interfaces(netns_path: str) -> list[IfStats]:
    """Counters of every interface but `lo` in the netns pinned at `netns_path`; [] when
    the namespace is gone. Blocks briefly: call it off the event loop."""
    result: list[str | None] = [None]
    error: list[BaseException] = []

    def run() -> None:
        try:
            result[0] = _read_in_netns(netns_path)
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=run, name="crispy-netns-stats", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return parse_net_dev(result[0]) if result[0] is not None else []
