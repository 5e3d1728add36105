"""The overlayfs snapshotter: each layer is a dir, a container's rootfs an overlay mount.

Layers are unpacked in overlay's own whiteout format (see `make_whiteout`, `make_opaque`),
so a chain of layer dirs mounted as lowerdirs shows exactly the image's filesystem.

One thing the unpacker can't finish alone: a dir a layer's tar does not list (it has
`a/b/f` but no `a/b`) must look like the dir below it (mode, owner, xattrs), as
containerd makes it, but the layers below may still be unpacking (a pull unpacks its
layers side by side). So the unpacker lists those dirs in `<id>/implicit-dirs`, and they
are fixed up, bottom layer first, before the chain is first used (prepare_active,
prepare_view), when every layer below is complete.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import threading

from crispy.snapshots.base import LayerDir, Mount, Snapshotter, overlay_escape
from crispy.system.beneath import BeneathError, walk_beneath

OPAQUE_XATTR = "trusted.overlay.opaque"
IMPLICIT_LOG = "implicit-dirs"  # in <root>/<id>: the unpacker's list of unlisted parents


def make_whiteout(path: str) -> None:
    """Record that `path` is deleted in this layer: a 0:0 char device, as overlayfs reads it."""
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def make_opaque(path: str) -> None:
    """Mark dir `path` opaque: the dirs of the same name in lower layers are hidden."""
    os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


def lower_dir(lowers: list[str], parts: list[str]) -> str | None:
    """The dir overlayfs shows at `parts` over the layer dirs `lowers` (top first), or None
    when it shows nothing there or a non-dir. Looked up as overlay does: per component,
    a whiteout or a non-dir stops the layers below, and so does an opaque dir."""
    stack = lowers
    for i in range(len(parts)):
        rel = parts[: i + 1]
        found: list[str] = []
        for layer in stack:  # each one has parts[:i] as a real dir
            path = os.path.join(layer, *rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):  # a whiteout, file or symlink
                break
            found.append(layer)
            if _is_opaque(path):
                break
        if not found:
            return None
        stack = found
    return os.path.join(stack[0], *parts)


def inherit_lower_dirs(upper: str, rels: list[str], lowers: list[str]) -> None:
    """Give each dir `rels` (paths below the layer dir `upper`) the mode, owner, xattrs and
    times of the dir `lowers` (top first) show at the same path, where they show one."""
    root = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel in rels:
            parts = rel.split("/")
            src = lower_dir(lowers, parts)
            if src is None:
                continue  # new, or over a file or symlink: stays 0755 root
            try:  # never through a symlink the layer put on the way later
                found = walk_beneath(root, parts, f"implicit dir {rel!r}", follow=False)
            except BeneathError:
                continue
            if found is None:
                continue  # removed later in its own layer
            fd = found[0]
            try:
                st = os.lstat(src)
                os.fchown(fd, st.st_uid, st.st_gid)
                for name in os.listxattr(src, follow_symlinks=False):
                    if name.startswith(("trusted.overlay.", "user.overlay.")):
                        continue  # overlay's own, of that layer
                    try:
                        os.setxattr(fd, name, os.getxattr(src, name, follow_symlinks=False))
                    except OSError as e:  # as the unpacker: what the host or fs won't take
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears setgid
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                if fd != root:
                    os.close(fd)
    finally:
        os.close(root)


@functools.cache
def _supports_index() -> bool:
    # Distros may build overlay with index=on by default; it ties lower dirs to one upper,
    # and layers here are shared by many containers. containerd turns it off the same way.
    return os.path.exists("/sys/module/overlay/parameters/index")


class OverlaySnapshotter(Snapshotter):
    name = "overlayfs"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._finishing = threading.Lock()
        self._finished: set[int] = set()  # layers known to have no implicit dirs left

    def layer_mode(self) -> str:
        return "overlay"

    def prepare_layer(self, sid: int, parents: list[int]) -> LayerDir:
        # A layer holds only its own changes; parents are stacked at mount time.
        fs = self._create(sid, lambda d: os.mkdir(os.path.join(d, "fs"), 0o755))
        self._finished.discard(sid)
        log = os.path.join(self._dir(sid), IMPLICIT_LOG)
        return LayerDir(fs, self.max_layer_size, log)

    def finish_layers(self, parents: list[int]) -> None:
        """Fix up the implicit dirs of the committed layers `parents` (bottom..top)."""
        if all(p in self._finished for p in parents):
            return
        with self._finishing:
            for i, sid in enumerate(parents):
                if sid in self._finished:
                    continue
                log = os.path.join(self._dir(sid), IMPLICIT_LOG)
                try:
                    with open(log, "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    self._finished.add(sid)
                    continue
                rels = data.decode("utf-8", "surrogateescape").split("\0") if data else []
                lowers = [self._fs(p) for p in reversed(parents[:i])]
                inherit_lower_dirs(self._fs(sid), rels, lowers)
                os.unlink(log)  # last: a crash before it just does the same again
                self._finished.add(sid)

    def prepare_view(self, sid: int, parents: list[int]) -> None:
        self.finish_layers(parents)
        super().prepare_view(sid, parents)

    def prepare_active(self, sid: int, parents: list[int]) -> None:
        self.finish_layers(parents)

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
