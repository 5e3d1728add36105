"""The filesystem a writable layer lives on and block device names, as cAdvisor labels them.

cAdvisor's `device` label is the device's name ("/dev/vda"), not its major:minor; the
filesystem metrics (limit, inodes) are those of the whole filesystem holding the layer,
from statvfs. Names don't change while crispyd runs, so each is looked up once.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

SYS = "/sys"
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Capacity:
    device: str
    size_bytes: int
    inodes: int
    inodes_free: int


@functools.lru_cache(maxsize=256)
def block_device_name(major: int, minor: int, sys: str = SYS) -> str:
    """ "/dev/<DEVNAME>" of the block device (from its uevent), else "major:minor"."""
    try:
        with open(os.path.join(sys, "dev", "block", f"{major}:{minor}", "uevent")) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "DEVNAME" and value:
                    return "/dev/" + value
    except OSError:
        pass
    return f"{major}:{minor}"


def mount_source(dev: int, mountinfo: str = MOUNTINFO) -> str | None:
    """The source of the mount whose device is `dev` (st_dev): "/dev/vda", "tmpfs", ..."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open(mountinfo) as f:
            for line in f:
                # id parent major:minor root mountpoint options [optional...] - type source
                fields = line.split()
                if len(fields) > 2 and fields[2] == want and " - " in line:
                    after = line.split(" - ", 1)[1].split()
                    if len(after) >= 2:
                        return after[1]
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=64)
def _device_of(dev: int, mountinfo: str) -> str:
    return mount_source(dev, mountinfo) or block_device_name(os.major(dev), os.minor(dev))


def capacity(path: str, mountinfo: str = MOUNTINFO) -> Capacity | None:
    """Size and inodes of the filesystem holding `path`; None when `path` is gone."""
    try:
        st = os.stat(path)
        vfs = os.statvfs(path)
    except OSError:
        return None
    return Capacity(
        device=_device_of(st.st_dev, mountinfo),
        size_bytes=vfs.f_blocks * vfs.f_frsize,
        inodes=vfs.f_files,
        inodes_free=vfs.f_ffree,
    )
