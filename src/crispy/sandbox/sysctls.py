"""Which sysctls a pod may set: only those its own namespaces isolate.

Kubernetes' namespaced sysctls: kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*
(IPC namespace), net.* (network namespace), kernel.hostname/domainname (UTS). Anything
else would change the whole node. Values are written to one /proc/sys file, so a value
cannot name a second key — but one that tries to (CVE-2022-0811 smuggled
`1+kernel.core_pattern=...` through CRI-O) is refused outright, as are control chars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from crispy import errors

_KEY = re.compile(r"^[a-z0-9_]+([./][A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*)+$")
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_IPC_KEYS = ("kernel.sem",)
_UTS_KEYS = ("kernel.hostname", "kernel.domainname")
# A value is numbers, words and separators; '=', '+', newlines and NUL never are.
_VALUE = re.compile(r"^[A-Za-z0-9_ \t.:,/\-]*$")


def dotted(key: str) -> str:
    """The dotted form Kubernetes compares against; 'net/ipv4/conf/eth0.100/x' keeps its dots
    inside a path component, so only the separators change."""
    if "/" not in key:
        return key
    return ".".join(key.split("/"))


def namespace_of(key: str) -> str | None:
    """'net', 'ipc' or 'uts' for a namespaced sysctl; None for a node-wide one."""
    d = dotted(key)
    if d.startswith("net."):
        return "net"
    if d in _IPC_KEYS or d.startswith(_IPC_PREFIXES):
        return "ipc"
    if d in _UTS_KEYS:
        return "uts"
    return None


def validate(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> dict[str, str]:
    """The pod's sysctls if all are allowed; InvalidArgument naming the first that is not."""
    out: dict[str, str] = {}
    for key, value in sysctls.items():
        if not _KEY.match(key) or ".." in key or "//" in key:
            raise errors.InvalidArgument(f"sysctl {key!r}: not a valid sysctl name")
        ns = namespace_of(key)
        if ns is None:
            raise errors.InvalidArgument(
                f"sysctl {key} is not namespaced: it would change the whole node"
            )
        if ns == "net" and host_network:
            raise errors.InvalidArgument(f"sysctl {key} is not allowed with host networking")
        if ns == "ipc" and host_ipc:
            raise errors.InvalidArgument(f"sysctl {key} is not allowed with host IPC")
        if ns == "uts" and host_network:
            raise errors.InvalidArgument(f"sysctl {key} is not allowed with the host's UTS")
        if not _VALUE.match(value):
            raise errors.InvalidArgument(
                f"sysctl {key}: value {value!r} has characters no sysctl value has "
                "(one value may not set a second key)"
            )
        out[key] = value
    return out
