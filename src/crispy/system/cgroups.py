"""What the host's cgroup setup is: the hierarchy version and the driver to use."""

from __future__ import annotations

import os
from enum import Enum

CGROUP_ROOT = "/sys/fs/cgroup"


class CgroupVersion(Enum):
    V1 = "v1"  # legacy, or hybrid with an empty v2 hierarchy at /sys/fs/cgroup/unified
    V2 = "v2"  # unified: /sys/fs/cgroup is cgroup2


def cgroup_version(root: str = CGROUP_ROOT) -> CgroupVersion:
    # /sys/fs/cgroup/cgroup.controllers exists only where the root is the v2 hierarchy.
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return CgroupVersion.V2
    return CgroupVersion.V1


def systemd_booted(run_dir: str = "/run/systemd/system") -> bool:
    """sd_booted(3): systemd is PID 1 exactly when this directory exists."""
    return os.path.isdir(run_dir)


def cgroup_driver(run_dir: str = "/run/systemd/system") -> str:
    """`systemd` where systemd manages cgroups, else `cgroupfs` (kubelet must match)."""
    return "systemd" if systemd_booted(run_dir) else "cgroupfs"
