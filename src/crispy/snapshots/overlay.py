"""The overlayfs snapshotter: each layer is a dir, a container's rootfs an overlay mount.

Layers are unpacked in overlay's own whiteout format (see `make_whiteout`, `make_opaque`),
so a chain of layer dirs mounted as lowerdirs shows exactly the image's filesystem.
"""

from __future__ import annotations

import functools
import os
import stat

from crispy.snapshots.base import Mount, Snapshotter, overlay_escape

OPAQUE_XATTR = "trusted.overlay.opaque"


def make_whiteout(path: str) -> None:
    """Record that `path` is deleted in this layer: a 0:0 char device, as overlayfs reads it."""
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def make_opaque(path: str) -> None:
    """Mark dir `path` opaque: the dirs of the same name in lower layers are hidden."""
    os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@functools.cache
def _supports_index() -> bool:
    # Distros may build overlay with index=on by default; it ties lower dirs to one upper,
    # and layers here are shared by many containers. containerd turns it off the same way.
    return os.path.exists("/sys/module/overlay/parameters/index")


class OverlaySnapshotter(Snapshotter):
    name = "overlayfs"

    def layer_mode(self) -> str:
        return "overlay"

    def prepare_layer(self, sid: int, parents: list[int]) -> str:
        # A layer holds only its own changes; parents are stacked at mount time.
        return self._create(sid, lambda d: os.mkdir(os.path.join(d, "fs"), 0o755))

    def prepare_active(self, sid: int, parents: list[int]) -> None:
        def populate(d: str) -> None:
            os.mkdir(os.path.join(d, "fs"), 0o755)
            os.mkdir(os.path.join(d, "work"), 0o700)

        self._create(sid, populate)

    def _work(self, sid: int) -> str:
        return os.path.join(self._dir(sid), "work")

    def mounts(self, sid: int, parents: list[int], readonly: bool = False) -> list[Mount]:
        ro_rw = "ro" if readonly else "rw"
        if not parents:
            return [Mount("bind", self._fs(sid), ["rbind", ro_rw])]
        if readonly and len(parents) == 1:
            return [Mount("bind", self._fs(parents[0]), ["rbind", "ro"])]
        # overlay lists lowerdirs top first; parents come bottom first.
        lower = "lowerdir=" + ":".join(overlay_escape(self._fs(p)) for p in reversed(parents))
        options = ["index=off"] if _supports_index() else []
        if readonly:
            # Without an upperdir overlay is read-only (and needs at least two lowerdirs).
            return [Mount("overlay", "overlay", [*options, lower])]
        options += [
            f"workdir={overlay_escape(self._work(sid))}",
            f"upperdir={overlay_escape(self._fs(sid))}",
            lower,
        ]
        return [Mount("overlay", "overlay", options)]
