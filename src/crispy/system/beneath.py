"""Resolve paths below a root directory fd as if it were "/", never letting the kernel
follow a symlink: what the layer applier (images/unpack.py), the overlay snapshotter and
the container spec's user and volume lookups need to read or make paths inside an
image's filesystem without ever reaching outside it. Stdlib only."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence

RelPath = tuple[str, ...]  # components below the root, none of them "", "." or ".."
MAX_SYMLINKS = 40  # as Linux's MAXSYMLINKS

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BeneathError(ValueError):
    """The path can't be resolved below the root (not a dir, a symlink loop...); for a
    layer, the layer is not well formed. The message names what was being resolved."""


class UnsafePathError(BeneathError):
    """The path tries to reach outside the root; the message names it."""


def close_unless_root(fd: int, root: int) -> None:
    if fd != root:
        os.close(fd)


def walk_beneath(
    root: int,
    parts: Sequence[str],
    what: str,
    *,
    follow: bool,
    make: Callable[[int, str, RelPath], int] | None = None,
    replace: Callable[[RelPath], bool] | None = None,
) -> tuple[int, RelPath] | None:
    """Open dir `parts` below the dir fd `root` without ever letting the kernel follow a symlink.

    Returns (fd, the real path of the dir below root); the fd is `root` itself for the
    root. Symlinks on the way are followed by hand, confined to root (an absolute target
    starts again from root, `..` stops at root), when `follow`; otherwise they are an
    UnsafePathError. A missing dir is made by `make(parent_fd, name, path)` (which
    returns an fd on it) when given, else the answer is None. A symlink or other non-dir
    on the way for which `replace(path)` is true is removed and made afresh by `make`
    instead (a lower layer's node where this layer needs a dir). Errors name `what`.
    """
    todo = list(reversed(parts))  # a stack: symlink targets get pushed onto it
    phys: list[str] = []
    cur = root
    links = 0
    try:
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":  # only from a symlink target
                if phys:
                    phys.pop()
                    up = walk_beneath(root, phys, what, follow=False)
                    if up is None:
                        raise BeneathError(f"{what}: directory vanished during walk")
                    close_unless_root(cur, root)
                    cur = up[0]
                continue
            try:
                nxt = os.open(comp, _O_DIR, dir_fd=cur)
            except FileNotFoundError:
                if make is None:
                    return None
                nxt = make(cur, comp, (*phys, comp))
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
                if make is not None and replace is not None and replace((*phys, comp)):
                    os.unlink(comp, dir_fd=cur)
                    nxt = make(cur, comp, (*phys, comp))
                    close_unless_root(cur, root)
                    cur = nxt
                    phys.append(comp)
                    continue
                where = "/".join((*phys, comp))
                if not stat.S_ISLNK(st.st_mode):
                    raise BeneathError(f"{what}: {where!r} is not a directory") from None
                if not follow:
                    raise UnsafePathError(
                        f"{what}: path goes through the symlink {where!r}"
                    ) from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise BeneathError(f"{what}: too many levels of symbolic links") from None
                target = os.readlink(comp, dir_fd=cur)
                if target.startswith("/"):  # absolute: from the root
                    close_unless_root(cur, root)
                    cur, phys = root, []
                todo.extend(reversed(target.split("/")))
                continue
            close_unless_root(cur, root)
            cur = nxt
            phys.append(comp)
        found, cur = cur, root  # hand the fd to the caller
        return found, tuple(phys)
    finally:
        close_unless_root(cur, root)


def open_beneath(root: int, path: str, what: str) -> tuple[int, os.stat_result] | None:
    """An O_PATH fd on the file `path` names below the dir fd `root`, as if root were "/".

    Symlinks, in the dirs and at the leaf, are followed by hand and confined to root, as
    walk_beneath() does: an `/etc/passwd -> /etc/shadow` in an image names the image's
    own shadow file. Nothing is opened for reading here (a device or FIFO in the image
    must not be opened at all): the caller checks the returned stat and reopens
    `/proc/self/fd/<fd>`. None when the file does not exist. Errors (BeneathError)
    name `what`.
    """
    comps = [c for c in path.split("/") if c not in ("", ".")]
    links = 0
    while True:
        if not comps or comps[-1] == "..":
            raise BeneathError(f"{what}: {path!r} is a directory")
        found = walk_beneath(root, comps[:-1], what, follow=True)
        if found is None:
            return None
        pfd, phys = found
        try:
            try:
                fd = os.open(comps[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except FileNotFoundError:
                return None
            st = os.fstat(fd)
            if not stat.S_ISLNK(st.st_mode):
                return fd, st
            try:
                target = os.readlink("", dir_fd=fd)  # the link itself, not its name again
            finally:
                os.close(fd)
        finally:
            close_unless_root(pfd, root)
        links += 1
        if links > MAX_SYMLINKS:
            raise BeneathError(f"{what}: too many levels of symbolic links")
        base = [] if target.startswith("/") else list(phys)
        comps = base + [c for c in target.split("/") if c not in ("", ".")]
