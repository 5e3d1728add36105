"""Snapshotters: the on-disk layout of image layers and container rootfs, and their mounts."""

from __future__ import annotations

import os

from crispy.snapshots.base import LayerDir, Mount, Snapshotter
from crispy.snapshots.native import NativeSnapshotter
from crispy.snapshots.overlay import OverlaySnapshotter
from crispy.system import mount as sysmount

__all__ = [
    "LayerDir",
    "Mount",
    "NativeSnapshotter",
    "OverlaySnapshotter",
    "Snapshotter",
    "new_snapshotter",
]

SNAPSHOTTERS: dict[str, type[Snapshotter]] = {
    "overlayfs": OverlaySnapshotter,
    "native": NativeSnapshotter,
}


def new_snapshotter(name: str, root: str, max_layer_size: int | None = None) -> Snapshotter:
    """The snapshotter `name` ("overlayfs", "native", or "auto": overlayfs where it works on
    the filesystem holding `root`, else native) rooted at `root`; `max_layer_size` is
    images.max_unpacked_layer_size (None: its default)."""
    if name == "auto":
        os.makedirs(root, mode=0o700, exist_ok=True)
        name = "overlayfs" if sysmount.overlay_supported(root) else "native"
    try:
        cls = SNAPSHOTTERS[name]
    except KeyError:
        known = ", ".join([*SNAPSHOTTERS, "auto"])
        raise ValueError(f"unknown snapshotter {name!r} (known: {known})") from None
    snap = cls(root)
    if max_layer_size is not None:
        snap.max_layer_size = max_layer_size
    return snap
