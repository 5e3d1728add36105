"""What the host's cgroup setup is: the hierarchy version and the driver to use."""

from __future__ import annotations

import contextlib
import os
from enum import Enum
from typing import NamedTuple

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


def hierarchies(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points of every cgroup hierarchy (each v1 controller, the v2 tree), once each."""
    points: list[str] = []
    with open(mountinfo, "rb") as f:
        for line in f:
            fields = line.split(b" ")
            sep = fields.index(b"-", 6)
            if fields[sep + 1] in (b"cgroup", b"cgroup2"):
                mp = os.fsdecode(fields[4])
                if mp not in points:
                    points.append(mp)
    return points


def systemd_slice_path(slice_name: str) -> str:
    """systemd's slice nesting as a cgroup path, as runc's systemd driver expands it:
    `kubepods-burstable-pod1.slice` -> `/kubepods.slice/kubepods-burstable.slice/...pod1.slice`."""
    if not slice_name.endswith(".slice") or "/" in slice_name:
        raise ValueError(f"{slice_name!r} is not a systemd slice name")
    stem = slice_name[: -len(".slice")]
    if stem == "-" or not stem:
        return "/"
    parts = stem.split("-")
    if any(not p for p in parts):
        raise ValueError(f"{slice_name!r} is not a valid slice name (empty part)")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def normalize_path(path: str) -> str:
    """An absolute cgroup path inside the hierarchy; never one that climbs out of it."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"cgroup path {path!r} climbs out of the hierarchy")
    return "/" + "/".join(parts)


class ContainerCgroup(NamedTuple):
    runtime: str  # the OCI linux.cgroupsPath: "<slice>:crispy:<id>" (systemd) or the path
    path: str  # the cgroup the runtime makes for it, inside each hierarchy


def container_cgroup(driver: str, pod_parent: str, pod_path: str, cid: str) -> ContainerCgroup:
    """The cgroup of a pod's container (or of its infra container, `cid` the pod's id).

    `pod_parent` is the pod's CRI cgroup_parent and `pod_path` the cgroup path it names
    (its record's "cgroup_parent" and "cgroup_path"). The systemd driver makes a unit
    `crispy-<cid>.scope` in the pod's slice, cgroupfs a cgroup `<cid>` in the pod's.
    """
    if driver == "systemd":
        scope = f"{pod_path.rstrip('/')}/crispy-{cid}.scope"
        return ContainerCgroup(f"{pod_parent}:crispy:{cid}", scope)
    path = f"{pod_path.rstrip('/')}/{cid}"
    return ContainerCgroup(path, path)


def _init_cpuset(d: str) -> None:
    # A new v1 cpuset cgroup starts with no cpus/mems and refuses tasks; inherit the parent's.
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = os.path.join(d, name)
        try:
            with open(own) as f:
                if f.read().strip():
                    continue
            with open(os.path.join(os.path.dirname(d), name)) as f:
                value = f.read().strip()
            with open(own, "w") as f:
                f.write(value)
        except OSError:
            pass


def create(path: str, roots: list[str] | None = None) -> list[str]:
    """Make the cgroup `path` in every hierarchy; returns the dirs that did not exist."""
    path = normalize_path(path)
    made: list[str] = []
    for root in hierarchies() if roots is None else roots:
        for attempt in range(3):
            try:
                made += _create_in(root, path)
                break
            except FileNotFoundError:
                # A parent another pod's removal rmdir'ed the moment it was empty: again.
                if attempt == 2:
                    raise
    return made


def _create_in(root: str, path: str) -> list[str]:
    made: list[str] = []
    d = root
    for part in path.strip("/").split("/") if path != "/" else []:
        d = os.path.join(d, part)
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        made.append(d)
        if os.path.exists(os.path.join(d, "cpuset.cpus")):
            _init_cpuset(d)
    return made


def missing_ancestors(path: str, roots: list[str] | None = None) -> list[str]:
    """The ancestors of the cgroup `path` (not `path` itself) that exist in no hierarchy,
    outermost first: those creating `path` will make, and so may remove again."""
    parts = normalize_path(path).strip("/").split("/")
    out: list[str] = []
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        if ancestor != "/" and not exists_anywhere(ancestor, roots):
            out.append(ancestor)
    return out


def remove_if_empty(paths: list[str], roots: list[str] | None = None) -> None:
    """rmdir each cgroup of `paths` in every hierarchy, innermost first; one that still has
    child cgroups (another pod's) or tasks stays. Never removes anything below them."""
    for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
        path = normalize_path(path)
        if path == "/":
            continue
        for root in hierarchies() if roots is None else roots:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, path.lstrip("/")))


def remove(path: str, roots: list[str] | None = None) -> list[str]:
    """rmdir the cgroup `path` in every hierarchy; returns those still there (busy)."""
    path = normalize_path(path)
    if path == "/":
        return []
    busy = []
    for root in hierarchies() if roots is None else roots:
        d = os.path.join(root, path.lstrip("/"))
        # Child cgroups a runtime left behind (empty ones: runsc leaves some) go first.
        for sub, dirs, _ in os.walk(d, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(sub, name))
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            busy.append(d)
    return busy


def exists_anywhere(path: str, roots: list[str] | None = None) -> list[str]:
    path = normalize_path(path)
    return [
        os.path.join(root, path.lstrip("/"))
        for root in (hierarchies() if roots is None else roots)
        if os.path.isdir(os.path.join(root, path.lstrip("/")))
    ]
