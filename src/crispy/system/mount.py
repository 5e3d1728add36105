"""The one module through which crispy makes mount syscalls.

Everything here is a thin binding (libc `mount(2)`/`umount2(2)` via ctypes) or a reader of
`/proc/self/mountinfo`, so the logic built on top (snapshotters, sandbox namespaces) can be
unit-tested with a stand-in for this module and the real calls are covered by root tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags.
MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

MOUNTINFO = "/proc/self/mountinfo"
FILESYSTEMS = "/proc/filesystems"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _mount_error(err: int, source: str | None, target: str, fstype: str | None) -> OSError:
    what = f"mount {fstype or '(none)'} {source or '(none)'} on {target}"
    return OSError(err, f"{what}: {os.strerror(err)}")


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str = "",
    *,
    cwd: str | None = None,
) -> None:
    """mount(2). Raises OSError(errno, message naming the target).

    With `cwd`, the call is made by a helper process whose working directory is `cwd`, so
    relative paths in `source` and `data` resolve there. This is how overlay mounts with
    more lower layers than fit in one page of options are made (as containerd does),
    without changing the working directory of this multi-threaded process (and without
    forking it: a fork of a gRPC process may crash in its atfork handlers).
    """
    if cwd is None:
        args = (_b(source), _b(target), _b(fstype), flags, _b(data) if data else None)
        if _libc.mount(*args) != 0:
            raise _mount_error(ctypes.get_errno(), source, target, fstype)
        return
    err = _mount_in(cwd, source, target, fstype, flags, data)
    if err:
        raise _mount_error(err, source, target, fstype)


# mount(2) from a fresh interpreter: exit status 0 or the errno.
_HELPER = """
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
a = [x.encode() if x else None for x in sys.argv[1:4]] + [int(sys.argv[4])]
a.append(sys.argv[5].encode() if sys.argv[5] else None)
sys.exit(0 if libc.mount(*a) == 0 else ctypes.get_errno())
"""


def _mount_in(
    cwd: str, source: str | None, target: str, fstype: str | None, flags: int, data: str
) -> int:
    """mount(2) made from a helper process in `cwd`; 0 or the errno."""
    argv = [sys.executable, "-I", "-S", "-c", _HELPER, source or "", target, fstype or ""]
    argv += [str(flags), data]
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        return errno.ENOENT  # the working dir itself is missing
    except (OSError, subprocess.TimeoutExpired):
        return errno.EIO
    return (
        proc.returncode if 0 < proc.returncode < 256 else (0 if proc.returncode == 0 else errno.EIO)
    )


def umount(target: str, flags: int = 0) -> None:
    """umount2(2). Raises OSError(errno, message naming the target)."""
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo (proc(5)), with octal escapes decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \040 \011 \012 \134.
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def read_mountinfo(path: str | None = None) -> list[MountInfo]:
    """All mounts of this process's mount namespace, in the kernel's order."""
    with open(path or MOUNTINFO, "rb") as f:
        lines = f.read().splitlines()
    result = []
    for line in lines:
        fields = line.split(b" ")
        # Optional fields (shared:N, master:N...) end at the lone "-" separator.
        sep = fields.index(b"-", 6)
        major, minor = fields[2].split(b":")
        result.append(
            MountInfo(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                major=int(major),
                minor=int(minor),
                root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                options=fields[5].decode(),
                fstype=_unescape(fields[sep + 1]),
                source=_unescape(fields[sep + 2]),
                super_options=_unescape(fields[sep + 3]) if len(fields) > sep + 3 else "",
            )
        )
    return result


def is_mountpoint(path: str) -> bool:
    """Whether `path` (symlinks resolved) is a mount point, bind mounts of the same fs included.

    os.path.ismount() compares st_dev with the parent and so misses bind mounts.
    """
    real = os.path.realpath(path)
    return any(m.mountpoint == real for m in read_mountinfo())


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path`, each once, in an order safe to unmount them in."""
    real = os.path.realpath(path)
    prefix = real.rstrip("/") + "/"
    found = [
        m.mountpoint
        for m in read_mountinfo()
        if m.mountpoint == real or m.mountpoint.startswith(prefix)
    ]
    # Later mounts sit on earlier ones, and children below parents: unmount latest, deepest first.
    unique = list(dict.fromkeys(reversed(found)))
    return sorted(unique, key=lambda p: p.count("/"), reverse=True)


def fs_type(path: str) -> str:
    """The filesystem type ("ext4", "overlay", "tmpfs"...) of the mount holding `path`."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    for m in read_mountinfo():
        mp = m.mountpoint
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        # Longest mount point wins; among equals the later one is on top.
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = m
    if best is None:
        raise OSError(2, f"no mount holds {path}")
    return best.fstype


def _in_proc_filesystems(name: str) -> bool:
    try:
        with open(FILESYSTEMS) as f:
            return any(line.split()[-1:] == [name] for line in f)
    except OSError:
        return False


def overlay_supported(where: str | None = None) -> bool:
    """Whether overlayfs can be used, with its upper and work dirs on the filesystem of `where`.

    Without `where`, the kernel listing overlay in /proc/filesystems is enough. With it, a
    tiny overlay (with an opaque lower dir, which needs trusted.* xattrs) is mounted in a temp
    dir there: some filesystems (overlay itself, NFS, xfs without d_type) can't be upper dirs.
    """
    if where is None and _in_proc_filesystems("overlay"):
        return True
    try:
        tmp = tempfile.mkdtemp(prefix=".overlay-check-", dir=where)
    except OSError:
        return False
    merged = os.path.join(tmp, "m")
    mounted = False
    try:
        lower, upper, work = (os.path.join(tmp, d) for d in ("l", "u", "w"))
        for d in (lower, upper, work, merged):
            os.mkdir(d)
        os.mkdir(os.path.join(lower, "d"))
        os.setxattr(os.path.join(lower, "d"), "trusted.overlay.opaque", b"y")
        mount("overlay", merged, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
        mounted = True
        return True
    except OSError:
        return False
    finally:
        if mounted:
            with contextlib.suppress(OSError):
                umount(merged, MNT_DETACH)
        shutil.rmtree(tmp, ignore_errors=True)
