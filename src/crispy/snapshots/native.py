"""The native (copying) snapshotter, for hosts where overlayfs can't be used.

Every snapshot is a full copy of its parent's tree: a layer is applied onto the merged copy
(whiteouts become deletions), a container's rootfs is a bind mount of its own copy. It costs
disk and time; it works on any filesystem.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable

from crispy.snapshots.base import LayerDir, Mount, Snapshotter

# Filesystems that can't hold an attribute are skipped rather than failing the copy.
_XATTR_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in _XATTR_UNSUPPORTED:
            return
        raise
    for name in names:
        value = os.getxattr(src, name, follow_symlinks=False)
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _XATTR_UNSUPPORTED:
                raise


def _copy_metadata(src: str, dst: str, st: os.stat_result) -> None:
    # Order matters: chown clears setuid/setgid and security.capability, so it comes first.
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    _copy_xattrs(src, dst)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_data(src: str, dst: str) -> None:
    fi = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                # In-kernel copy; shares extents (reflink) where the filesystem can.
                while os.copy_file_range(fi, fo, 1 << 30):
                    pass
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                os.lseek(fi, 0, os.SEEK_SET)
                os.lseek(fo, 0, os.SEEK_SET)
                os.ftruncate(fo, 0)
                with open(fi, "rb", closefd=False) as r, open(fo, "wb", closefd=False) as w:
                    shutil.copyfileobj(r, w, 1 << 20)
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def copy_tree(src: str, dst: str) -> None:
    """Copy the tree `src` to the new path `dst`, keeping everything an image layer can hold.

    Files are copied, never linked to `src` (a container's writes must not reach its image);
    hardlinks inside `src` stay hardlinks inside `dst`. Owners, modes (setuid too), xattrs,
    times, symlinks, devices, fifos and sockets are kept. Iterative, so depth is no limit.
    """
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, str, os.stat_result]] = []
    root_st = os.lstat(src)
    os.mkdir(dst, 0o700)
    dirs.append((src, dst, root_st))
    stack = [(src, dst)]
    while stack:
        sdir, ddir = stack.pop()
        with os.scandir(sdir) as it:
            entries = list(it)
        for e in entries:
            s, d = e.path, os.path.join(ddir, e.name)
            st = e.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(d, 0o700)
                dirs.append((s, d, st))
                stack.append((s, d))
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d)
                continue
            if stat.S_ISREG(mode):
                _copy_data(s, d)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(s), d)
            else:  # char and block devices, fifos, sockets (whiteouts are 0:0 char devices)
                os.mknod(d, stat.S_IFMT(mode) | 0o600, st.st_rdev)
            _copy_metadata(s, d, st)
            if st.st_nlink > 1 and not stat.S_ISLNK(mode):
                links[key] = d
    # Dirs last, deepest first: creating entries bumps a dir's mtime, and a read-only mode
    # would stop the copy into it.
    for s, d, st in reversed(dirs):
        _copy_metadata(s, d, st)


class NativeSnapshotter(Snapshotter):
    name = "native"

    def layer_mode(self) -> str:
        return "native"

    def _populate(self, parents: list[int]) -> Callable[[str], None]:
        def populate(d: str) -> None:
            fs = os.path.join(d, "fs")
            if parents:
                copy_tree(self._fs(parents[-1]), fs)
            else:
                os.mkdir(fs, 0o755)

        return populate

    def prepare_layer(self, sid: int, parents: list[int]) -> LayerDir:
        # The top parent's tree already is the merged image so far; the layer goes on a copy.
        return LayerDir(self._create(sid, self._populate(parents)), self.max_layer_size)

    def prepare_active(self, sid: int, parents: list[int]) -> None:
        self._create(sid, self._populate(parents))

    def mounts(self, sid: int, parents: list[int], readonly: bool = False) -> list[Mount]:
        if readonly and parents:
            # Every snapshot is a full tree, so the top parent alone is the chain's view.
            return [Mount("bind", self._fs(parents[-1]), ["rbind", "ro"])]
        return [Mount("bind", self._fs(sid), ["rbind", "ro" if readonly else "rw"])]
