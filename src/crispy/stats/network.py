"""Interface counters of a pod's network namespace, as `/proc/net/dev` shows them inside it.

A pinned netns has no process in it whose /proc/<pid>/net/dev could be read, so a thread
joins the namespace (system.ns.run_in_netns: a fresh thread that ends right after, so no
other thread is ever left in a pod's namespace) and reads its own
/proc/thread-self/net/dev.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from crispy.system.ns import run_in_netns


@dataclass(frozen=True)
class IfStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


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
            n = [int(f) for f in fields[:12]]
            out.append(
                IfStats(
                    name,
                    rx_bytes=n[0],
                    rx_errors=n[2],
                    tx_bytes=n[8],
                    tx_errors=n[10],
                    rx_packets=n[1],
                    rx_dropped=n[3],
                    tx_packets=n[9],
                    tx_dropped=n[11],
                )
            )
        except ValueError:
            continue
    return out


def _read_net_dev() -> str:
    with open("/proc/thread-self/net/dev") as f:
        return f.read()


def interfaces(netns_path: str) -> list[IfStats]:
    """Counters of every interface but `lo` in the netns pinned at `netns_path`; [] when
    the namespace is gone. Blocks briefly: call it off the event loop."""
    try:
        text = run_in_netns(netns_path, _read_net_dev)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        # EINVAL: not a netns any more (the pin was unmounted, an empty file stays).
        if e.errno == errno.EINVAL:
            return []
        raise
    return parse_net_dev(text)
