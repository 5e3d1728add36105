"""The one module through which crispy creates, pins and releases Linux namespaces.

A pod's namespaces need no process to stay alive: a short-lived child unshares them,
sets the hostname and the pod's sysctls inside them, and its `/proc/<pid>/ns/<kind>`
files are bind-mounted onto files under the state dir (what CRI-O's pinns does). The
bind mount keeps the namespace, and so the pod's IP, alive until it is unmounted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

from crispy.system import mount as mnt

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"

FLAGS = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """Creating or pinning a namespace failed; the message says which step."""


class SysctlError(NamespaceError):
    """The kernel refused the value of one sysctl (`key`): out of range, or no such key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def sysctl_path(key: str) -> str:
    """`net.ipv4.ip_forward` -> /proc/sys/net/ipv4/ip_forward; a key with '/' keeps its dots
    (`net/ipv4/conf/eth0.100/forwarding`), as Kubernetes and runc read it."""
    rel = key if "/" in key else key.replace(".", "/")
    return "/proc/sys/" + rel


# Writes each (path, value) pair given after the script; arguments, never interpolated.
# A failed write names its path on a line of its own, so the caller can name the sysctl.
_FAILED = "crispy: cannot write "
_WRITE_ALL = (
    'while [ $# -gt 0 ]; do printf %s "$2" > "$1" || '
    f'{{ echo "{_FAILED}$1" >&2; exit 1; }}; shift 2; done'
)


def pin(
    targets: Mapping[str, str], hostname: str = "", sysctls: Mapping[str, str] | None = None
) -> None:
    """Create new namespaces of the kinds in `targets` (net, ipc, uts) and pin each on
    its target path. `hostname` is set in the new UTS namespace; `sysctls` are written
    inside the new namespaces. Raises NamespaceError; nothing stays pinned on failure.

    util-linux's unshare(1) does the unshare and the bind mounts: forking crispyd itself
    (a multi-threaded gRPC process) to do it is not safe."""
    unknown = set(targets) - set(FLAGS)
    if unknown:
        raise ValueError(f"cannot pin namespace kinds {sorted(unknown)}")
    if hostname and "uts" not in targets:
        raise ValueError("a hostname needs a new UTS namespace")
    writes: list[str] = []
    if hostname:
        writes += ["/proc/sys/kernel/hostname", hostname]
    keys: dict[str, str] = {}
    for key, value in (sysctls or {}).items():
        keys[sysctl_path(key)] = key
        writes += [sysctl_path(key), value]
    argv = [UNSHARE, *(f"--{kind}={target}" for kind, target in targets.items())]
    argv += ["--", "/bin/sh", "-c", _WRITE_ALL, "sh", *writes]
    for target in targets.values():
        # A bind mount needs an existing file to cover.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
        os.close(fd)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        failed = proc.returncode != 0
        message = (proc.stderr or proc.stdout).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        failed, message = True, str(e)
    if failed:
        for target in targets.values():
            release(target)
        lines = message.splitlines()
        failed_on = [ln[len(_FAILED) :] for ln in lines if ln.startswith(_FAILED)]
        rest = "; ".join(ln for ln in lines if not ln.startswith(_FAILED))
        if failed_on and failed_on[0] in keys:
            raise SysctlError(keys[failed_on[0]], rest or "write failed")
        raise NamespaceError(message or "unshare failed")


def release(target: str) -> None:
    """Unpin a namespace (the kernel frees it once nothing else holds it) and drop the file.
    Safe to call for a path that is not pinned or does not exist."""
    with contextlib.suppress(OSError):
        mnt.umount(target, mnt.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)


def is_pinned(target: str) -> bool:
    return mnt.is_mountpoint(target)


def _setns(netns_path: str) -> None:
    """Move the calling thread into the network namespace at `netns_path`."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                # E.g. the empty file a pin leaves once its bind mount is gone.
                raise NamespaceError(
                    err, f"not a network namespace: {os.strerror(err)}", netns_path
                )
            raise OSError(err, os.strerror(err), netns_path)
    finally:
        os.close(fd)


def run_in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a fresh short-lived thread that has joined the network namespace at
    `netns_path` and return its result (or raise its exception) here.

    setns(2) changes only the calling thread, and that thread ends right after `fn`, so
    neither the caller, the event loop nor a pooled worker thread (asyncio.to_thread
    reuses them) is ever left in a pod's namespace. Sockets `fn` creates keep the
    namespace they were created in. Blocks until `fn` returns: call it off the event loop.

    FileNotFoundError when the file is gone; NamespaceError (an OSError, errno EINVAL)
    when it is not a network namespace."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _setns(netns_path)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=run, name="crispy-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
