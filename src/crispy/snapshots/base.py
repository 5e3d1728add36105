"""The snapshotter interface, the Mount shape, and what every snapshotter does the same way.

A snapshotter owns filesystem layout only: `<root>/<id>/fs` holds a layer's content or a
container's writable layer, `<root>/<id>/work` the overlay work dir. It knows nothing of
SQLite or CRI: the image service records metadata and hands over numeric snapshot ids,
which keep overlay mount options short.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import struct
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from crispy.system import mount as sysmount


class LayerDir(str):
    """The dir prepare_layer() returns, with what the unpacker must know about the layer.

    It is the path itself (callers pass it on as a str); images.unpack.apply_layer reads
    `max_size` (images.max_unpacked_layer_size; 0: none) and `implicit_log` (where overlay
    mode lists the parent dirs a layer's tar left out; None: not wanted) from it.
    """

    max_size: int
    implicit_log: str | None

    def __new__(cls, path: str, max_size: int, implicit_log: str | None = None) -> LayerDir:
        self = super().__new__(cls, path)
        self.max_size = max_size
        self.implicit_log = implicit_log
        return self


# What a layer may unpack to unless the daemon sets Snapshotter.max_layer_size from
# images.max_unpacked_layer_size (the same default, as images.unpack.DEFAULT_MAX_LAYER_SIZE).
DEFAULT_MAX_LAYER_SIZE = 64 << 30


@dataclass
class Mount:
    """One mount to make, in the shape of containerd's mount.Mount."""

    type: str  # "overlay" or "bind"
    source: str
    options: list[str] = field(default_factory=list)


class Snapshotter(ABC):
    """Lays out and mounts snapshots under `root` (= `<crispy root>/snapshots`)."""

    name: str
    max_layer_size: int = DEFAULT_MAX_LAYER_SIZE  # what prepare_layer's LayerDir carries

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        # Half-built snapshots and overlay probes left by a crash; only this process owns root.
        for entry in os.listdir(self.root):
            if entry.startswith((".tmp-", ".overlay-check-")):
                self._remove_dir(os.path.join(self.root, entry))

    # -- what each driver decides --------------------------------------------------------

    @abstractmethod
    def layer_mode(self) -> str:
        """How the unpacker must treat whiteouts: "overlay" (write them as 0:0 char devices
        and opaque-dir xattrs) or "native" (apply them by deleting from the merged copy)."""

    @abstractmethod
    def prepare_layer(self, sid: int, parents: list[int]) -> LayerDir:
        """Create the snapshot for a new image layer; return the dir to unpack it into."""

    @abstractmethod
    def prepare_active(self, sid: int, parents: list[int]) -> None:
        """Create a writable snapshot (a container's rootfs) over `parents` (bottom..top)."""

    @abstractmethod
    def mounts(self, sid: int, parents: list[int], readonly: bool = False) -> list[Mount]:
        """The mounts that show snapshot `sid` over `parents` (bottom..top).

        readonly=True gives a view of the committed chain `parents` (the snapshot's own dir
        is not part of it); with no parents, of the snapshot's own dir.
        """

    # -- the same for every driver -------------------------------------------------------

    def prepare_view(self, sid: int, parents: list[int]) -> None:
        """Create a snapshot to mount `parents` read-only through (mounts(readonly=True)).

        Nothing is copied: the view shows the parents' own dirs. Its own dir stays empty,
        and is what is shown when there are no parents (an image without layers).
        """
        self._create(sid, lambda d: os.mkdir(os.path.join(d, "fs"), 0o755))

    def _dir(self, sid: int) -> str:
        return os.path.join(self.root, str(int(sid)))

    def _fs(self, sid: int) -> str:
        return os.path.join(self.root, str(int(sid)), "fs")

    def writable_dir(self, sid: int) -> str:
        """Where an active snapshot's writes land (overlay's upper dir; native's whole copy)."""
        return self._fs(sid)

    def _create(self, sid: int, populate: Callable[[str], None]) -> str:
        """Build `<root>/<sid>` in a temp dir and rename it in place, so a snapshot dir that
        exists is complete. Ids come from the metadata store, which is the truth: a dir left
        under a new id by a crash before its record was written is garbage and is replaced."""
        tmp = tempfile.mkdtemp(prefix=f".tmp-{int(sid)}-", dir=self.root)
        try:
            os.chmod(tmp, 0o700)
            populate(tmp)
            final = self._dir(sid)
            if os.path.lexists(final):
                self._remove_dir(final)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        return self._fs(sid)

    def exists(self, sid: int) -> bool:
        return os.path.isdir(self._fs(sid))

    def mount(self, sid: int, parents: list[int], target: str, readonly: bool = False) -> None:
        mount_all(self.mounts(sid, parents, readonly), target)

    def unmount(self, target: str) -> None:
        unmount_all(target)

    def remove(self, sid: int) -> None:
        """Delete the snapshot's dir and everything in it; a missing snapshot is not an error."""
        self._remove_dir(self._dir(sid))

    def _remove_dir(self, path: str) -> None:
        if not os.path.lexists(path):
            return
        # rmtree would delete through a mount left inside (a leaked bind of a host dir);
        # detach any first.
        for mp in sysmount.mounts_under(path):
            unmount_all(mp)
        remove_tree(path)

    def usage(self, sid: int) -> tuple[int, int]:
        """(bytes on disk, inodes) of the snapshot's fs, as du counts: hardlinks once,
        symlinks not followed, other filesystems mounted inside not entered."""
        return disk_usage(self._fs(sid))


# -- mounting ------------------------------------------------------------------------------

_FLAGS: dict[str, tuple[bool, int]] = {
    # option: (clear the flag?, flag)
    "async": (True, sysmount.MS_SYNCHRONOUS),
    "atime": (True, sysmount.MS_NOATIME),
    "bind": (False, sysmount.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, sysmount.MS_NODEV),
    "diratime": (True, sysmount.MS_NODIRATIME),
    "dirsync": (False, sysmount.MS_DIRSYNC),
    "exec": (True, sysmount.MS_NOEXEC),
    "lazytime": (False, sysmount.MS_LAZYTIME),
    "noatime": (False, sysmount.MS_NOATIME),
    "nodev": (False, sysmount.MS_NODEV),
    "nodiratime": (False, sysmount.MS_NODIRATIME),
    "noexec": (False, sysmount.MS_NOEXEC),
    "nolazytime": (True, sysmount.MS_LAZYTIME),
    "norelatime": (True, sysmount.MS_RELATIME),
    "nostrictatime": (True, sysmount.MS_STRICTATIME),
    "nosuid": (False, sysmount.MS_NOSUID),
    "nosymfollow": (False, sysmount.MS_NOSYMFOLLOW),
    "rbind": (False, sysmount.MS_BIND | sysmount.MS_REC),
    "relatime": (False, sysmount.MS_RELATIME),
    "remount": (False, sysmount.MS_REMOUNT),
    "ro": (False, sysmount.MS_RDONLY),
    "rw": (True, sysmount.MS_RDONLY),
    "strictatime": (False, sysmount.MS_STRICTATIME),
    "suid": (True, sysmount.MS_NOSUID),
    "sync": (False, sysmount.MS_SYNCHRONOUS),
}

_PROPAGATION = {
    "private": sysmount.MS_PRIVATE,
    "rprivate": sysmount.MS_PRIVATE | sysmount.MS_REC,
    "shared": sysmount.MS_SHARED,
    "rshared": sysmount.MS_SHARED | sysmount.MS_REC,
    "slave": sysmount.MS_SLAVE,
    "rslave": sysmount.MS_SLAVE | sysmount.MS_REC,
    "unbindable": sysmount.MS_UNBINDABLE,
    "runbindable": sysmount.MS_UNBINDABLE | sysmount.MS_REC,
}

# Flags a bind mount only takes on a second, MS_REMOUNT call.
_BIND_REMOUNT = (
    sysmount.MS_RDONLY
    | sysmount.MS_NOSUID
    | sysmount.MS_NODEV
    | sysmount.MS_NOEXEC
    | sysmount.MS_NOATIME
    | sysmount.MS_NODIRATIME
    | sysmount.MS_RELATIME
    | sysmount.MS_STRICTATIME
    | sysmount.MS_NOSYMFOLLOW
)


def parse_options(options: list[str]) -> tuple[int, list[int], list[str]]:
    """mount(8)-style options → (flags, propagation changes, fs data options)."""
    flags, propagation, data = 0, [], []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation.append(_PROPAGATION[opt])
        else:
            data.append(opt)
    return flags, propagation, data


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def overlay_escape(path: str) -> str:
    """Escape a path for an overlay option value (`:` separates lowerdirs, `,` options)."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _overlay_unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def _split_lowerdir(value: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if c == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [_overlay_unescape(p) for p in parts]


def compact_overlay_data(data: list[str]) -> tuple[list[str], str]:
    """Rewrite overlay dir options relative to the lowerdirs' common parent dir.

    The kernel reads at most one page of mount data; with absolute paths like
    /var/lib/crispy/snapshots/123/fs that is ~128 layers. Relative paths ("123/fs"), resolved
    from a helper whose cwd is that common dir, fit ~500 (overlay's own stacking limit).
    Returns (new options, the dir to mount from).
    """
    lower = next((o for o in data if o.startswith("lowerdir=")), None)
    if lower is None:
        return data, "/"
    dirs = _split_lowerdir(lower.removeprefix("lowerdir="))
    common = os.path.commonpath(dirs) if all(os.path.isabs(d) for d in dirs) else ""
    if not common:
        return data, "/"
    if common in dirs:  # a single lowerdir, or one inside another: stay at its parent
        common = os.path.dirname(common)
    out = []
    for opt in data:
        key, sep, value = opt.partition("=")
        if sep and key == "lowerdir":
            rel = [os.path.relpath(d, common) for d in dirs]
            out.append("lowerdir=" + ":".join(overlay_escape(r) for r in rel))
        elif sep and key in ("upperdir", "workdir"):
            path = _overlay_unescape(value)
            if os.path.isabs(path) and path.startswith(common.rstrip("/") + "/"):
                out.append(f"{key}={overlay_escape(os.path.relpath(path, common))}")
            else:
                out.append(opt)
        else:
            out.append(opt)
    return out, common


def mount_one(m: Mount, target: str) -> None:
    flags, propagation, data = parse_options(m.options)
    if m.type == "bind":
        flags |= sysmount.MS_BIND
    # Flags the first mount call can't apply, set by a remount once it is in place.
    remount = 0
    if flags & sysmount.MS_BIND:
        # The kernel ignores all but MS_REC on the first call of a bind mount.
        remount = flags & _BIND_REMOUNT
        sysmount.mount(m.source, target, None, flags & (sysmount.MS_BIND | sysmount.MS_REC))
    else:
        text = ",".join(data)
        cwd = None
        if m.type == "overlay" and len(text) >= _page_size():
            data, cwd = compact_overlay_data(data)
            text = ",".join(data)
            if len(text) >= _page_size():
                raise OSError(
                    errno.E2BIG,
                    f"mount overlay on {target}: {len(text)} bytes of options exceed a page"
                    " even with relative paths (too many layers)",
                )
        sysmount.mount(m.source, target, m.type, flags, text, cwd=cwd)
    try:
        if remount:
            sysmount.mount(None, target, None, sysmount.MS_BIND | sysmount.MS_REMOUNT | remount)
        for p in propagation:
            sysmount.mount(None, target, None, p)
    except BaseException:
        with contextlib.suppress(OSError):
            sysmount.umount(target, sysmount.MNT_DETACH)
        raise


def mount_all(mounts: list[Mount], target: str) -> None:
    """Make `mounts` on `target` in order; on failure undo the ones already made."""
    done = 0
    try:
        for m in mounts:
            mount_one(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(OSError):
                sysmount.umount(target, sysmount.MNT_DETACH)
        raise


def unmount_all(target: str) -> None:
    """Unmount every mount stacked on `target`; lazily where busy; nothing mounted is fine."""
    nofollow = sysmount.UMOUNT_NOFOLLOW
    for _ in range(1024):  # a bound on stacked mounts, not a retry count
        try:
            sysmount.umount(target, nofollow)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):  # not (or no longer) a mount point
                return
            if e.errno != errno.EBUSY:
                raise
            # Still in use (a process's cwd, an open file): detach now, freed when unused.
            sysmount.umount(target, sysmount.MNT_DETACH | nofollow)
    raise OSError(errno.EBUSY, f"umount {target}: too many stacked mounts")


# -- removing and measuring trees ----------------------------------------------------------

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


def _clear_immutable(path: str, is_dir: bool) -> None:
    # chattr +i/+a block unlinking even for root (a privileged container can set them).
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECTORY if is_dir else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 4)
        (attrs,) = struct.unpack("i", buf)
        if attrs & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
            new = attrs & ~(_FS_IMMUTABLE_FL | _FS_APPEND_FL)
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", new))
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_removable(top: str) -> None:
    """Open up every dir (u+rwx) and clear immutable flags, top-down, so rmtree can work."""
    stack = [top]
    while stack:
        d = stack.pop()
        _clear_immutable(d, True)
        with contextlib.suppress(OSError):
            os.chmod(d, stat.S_IMODE(os.lstat(d).st_mode) | stat.S_IRWXU)
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                _clear_immutable(e.path, False)


def remove_tree(path: str) -> None:
    """rm -rf: also through read-only dirs and immutable files; a missing path is fine."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        _make_removable(path)
        shutil.rmtree(path)


def _walk(top: str) -> Iterator[os.stat_result]:
    root = os.lstat(top)
    yield root
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_dev != root.st_dev:  # a mount inside: not this snapshot's disk
                continue
            yield st
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)


def disk_usage(top: str) -> tuple[int, int]:
    """(bytes of disk blocks, inodes) under `top`, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for st in _walk(top):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        size += st.st_blocks * 512
    return size, len(seen)
