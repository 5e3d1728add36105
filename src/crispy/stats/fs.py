"""Disk use of a directory tree (a container's writable layer), counted as `du` does.

Bytes are allocated blocks (st_blocks * 512), not apparent sizes: a sparse file costs
what it holds, and that is what fills the disk kubelet evicts on. Walking a big upper
dir is costly, so kubelet's polls go through `usage_cached`.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict


def usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) used by the tree at `path`, the top dir included. Each hardlinked
    inode counts once, symlinks are not followed, mounts inside the tree are not entered,
    and entries that vanish while walking (a running container writes) are skipped.
    Raises FileNotFoundError when `path` itself is gone."""
    top = os.lstat(path)
    seen: set[tuple[int, int]] = set()  # only inodes with more than one link
    total_bytes = top.st_blocks * 512
    inodes = 1
    stack = [path] if stat.S_ISDIR(top.st_mode) else []
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total_bytes += st.st_blocks * 512
                inodes += 1
                # A different device is something mounted inside: not this layer's use.
                if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                    stack.append(entry.path)
    return total_bytes, inodes


class _Entry:
    __slots__ = ("at", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one walk of a path at a time
        self.at = float("-inf")
        self.value: tuple[int, int] = (0, 0)


_MAX_ENTRIES = 4096  # beyond any node's container count; drops the least recently asked
_cache: OrderedDict[str, _Entry] = OrderedDict()
_cache_lock = threading.Lock()
_clock = time.monotonic  # a module global so tests can move time


def usage_cached(path: str, max_age: float) -> tuple[int, int] | None:
    """`usage(path)`, walked at most once per `max_age` seconds per path (kubelet asks every
    10-15 s, for every container). Concurrent callers for one path wait for one walk rather
    than each walking. None when `path` is gone (the container is being removed)."""
    with _cache_lock:
        entry = _cache.get(path)
        if entry is None:
            entry = _cache[path] = _Entry()
            while len(_cache) > _MAX_ENTRIES:
                _cache.popitem(last=False)
        _cache.move_to_end(path)
    with entry.lock:
        if _clock() - entry.at < max_age:
            return entry.value
        try:
            entry.value = usage(path)
        except FileNotFoundError:
            forget(path)
            return None
        entry.at = _clock()
        return entry.value


def forget(path: str) -> None:
    """Drop `path` from the cache (its container was removed)."""
    with _cache_lock:
        _cache.pop(path, None)
