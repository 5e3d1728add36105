"""Apply one OCI image layer (an uncompressed tar stream) onto a directory, safely.

This does the job of containerd's `archive.Apply`. The tar is read strictly in order (it
is still downloading while we read it), and no entry may create, change or read anything
outside `dest`:

- Names are taken relative to `dest` (a leading `/` is dropped, as containerd and GNU tar
  do); a `..` that climbs above `dest` is rejected.
- Every path is walked one component at a time from an fd on `dest`, opening each
  directory with O_NOFOLLOW, so the kernel never follows a symlink for us. A symlink met
  in an entry's parent path is followed by hand and confined to `dest`, as if `dest` were
  the root (containerd's `fs.RootPath` does the same), so `evil -> /etc` then
  `evil/passwd` writes `dest/etc/passwd`. A hardlink target may not go through a symlink
  at all.
- The leaf is always made with "create, don't follow" calls (O_CREAT|O_EXCL|O_NOFOLLOW,
  mkdir, symlink, mknod, link without AT_SYMLINK_FOLLOW) after removing whatever was
  there, so nothing is ever written through an existing symlink or hardlink.

Whiteouts: in "overlay" mode `dest` is an empty dir that becomes one overlayfs lower
layer, and whiteouts are written in overlay's own format (a 0:0 char device, the
`trusted.overlay.opaque` xattr). In "native" mode `dest` holds a copy of the parent
layers, and whiteouts delete from it for real.

Both modes build the filesystem containerd's applier builds, which is what overlayfs
shows: a symlink or file that a *lower* layer left where this layer needs a directory is
replaced by a directory, never followed (overlay mode never sees lower layers at all;
native mode tells them apart by what this layer made). A parent dir the tar does not
list is made 0755 root; if a lower layer has that dir, it inherits its mode, owner and
xattrs instead: native mode keeps the lower dir itself, overlay mode lists such dirs in
`implicit_log` for the snapshotter to fix up once the lower layers are complete (they
may still be unpacking next to this one).

Limits: a layer whose files add up to more than `max_size` bytes (apparent sizes, so a
sparse file counts in full) is refused before the entry that crosses it is written, so
a decompression bomb costs nothing. Sparse tar entries (GNU and PAX) are written with
holes, and so are whole 1 MiB runs of zeros in regular entries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO, Literal, TypeVar, cast

from crispy.system.beneath import (
    BeneathError,
    RelPath,
    UnsafePathError,
    close_unless_root,
    walk_beneath,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # file data is copied in pieces this big
# What tarfile reads from the stream at a time. Larger means fewer calls through the
# caller's hashing/decompressing readers for file data, but tarfile copies what is left
# of its buffer on every header read, so it must stay well below CHUNK.
TAR_BUFSIZE = 32 << 10
MAX_META_SIZE = 1 << 20  # PAX / GNU long-name headers; Go's archive/tar has the same cap
# images.max_unpacked_layer_size's default: far beyond any real layer, short of a full disk.
DEFAULT_MAX_LAYER_SIZE = 64 << 30
_ZEROS = memoryview(bytes(CHUNK))  # a chunk of file data this equal is skipped as a hole
_MIN_HOLE = 4096

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."
# overlayfs reads these as whiteouts, opaque markers and redirects (user.overlay.* when
# mounted with userxattr): from a tar they could forge them, so they are dropped.
_FORBIDDEN_XATTRS = ("trusted.overlay.", "user.overlay.")
_META_TYPES = frozenset(
    (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    )
)

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_ID = (1 << 32) - 1  # (uid_t)-1 means "leave unchanged" to chown
_NS = 1_000_000_000
_MAX_NS = (1 << 62) - 1  # keeps absurd tar times inside what utimensat takes

T = TypeVar("T")


# The path walker's errors are the layer's: a bad path in a tar is a bad layer.
LayerFormatError = BeneathError
UnsafeLayerError = UnsafePathError


class LayerTooLargeError(LayerFormatError):
    """The layer unpacks to more than the size limit; the message names the entry and limit."""


@dataclass
class ApplyStats:
    entries: int = 0  # tar entries read, whiteouts and skipped ones included
    bytes: int = 0  # sizes of the regular files written (a sparse one counts in full)


def apply_layer(
    stream: BinaryIO,
    dest: str,
    *,
    mode: Literal["overlay", "native"] = "overlay",
    same_owner: bool = True,
    max_size: int | None = None,
    implicit_log: str | None = None,
) -> ApplyStats:
    """Apply the uncompressed layer tar read from `stream` onto the directory `dest`.

    Reads `stream` with `read(n)` only, to its very end (past the tar end marker), so a
    caller hashing it sees every byte. Raises UnsafeLayerError for an entry that tries to
    escape `dest`, LayerTooLargeError past `max_size` bytes of files (0: no limit),
    LayerFormatError for a truncated or corrupt tar, OSError (with a note naming the
    entry) when the filesystem refuses. On error `dest` is left half-applied.

    Overlay mode writes the parent dirs the tar did not list (NUL-separated paths below
    `dest`) to the file `implicit_log`, when given and there are any. `max_size` and
    `implicit_log` default to the attributes of the same names of `dest`, which a
    snapshotter's prepare_layer() sets (a snapshots.LayerDir), else to
    DEFAULT_MAX_LAYER_SIZE and none.
    """
    if mode not in ("overlay", "native"):
        raise ValueError(f"unknown layer mode {mode!r}")
    if max_size is None:
        max_size = cast(int, getattr(dest, "max_size", DEFAULT_MAX_LAYER_SIZE))
    if implicit_log is None:
        implicit_log = cast("str | None", getattr(dest, "implicit_log", None))
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    applier = _Applier(root, native=mode == "native", same_owner=same_owner, max_size=max_size)
    try:
        applier.run(stream)
        if applier.implicit and implicit_log is not None:
            applier.write_implicit_log(implicit_log)
    finally:
        applier.close()
        os.close(root)
    while stream.read(CHUNK):  # trailing zero blocks and record padding
        pass
    return applier.stats


# Subclasses of tarfile.HeaderError that typeshed does not list.
_EmptyHeaderError: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_EOFHeaderError: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]


class _EndOfStream(Exception):
    """The stream ended exactly where a tar header should start."""


class _LayerTarInfo(tarfile.TarInfo):
    """TarInfo that tells a truncated or corrupt header from the end of the archive.

    tarfile takes a short or bad header anywhere past the first as a quiet end of the
    archive; a layer cut short must instead fail loudly.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _LayerTarInfo:
        try:
            info = super().frombuf(buf, encoding, errors)
        except _EmptyHeaderError:
            raise _EndOfStream from None
        except _EOFHeaderError:
            raise  # a zero block: the proper end marker
        except tarfile.HeaderError as e:
            raise LayerFormatError(_header_problem(bytes(buf), e)) from None
        if info.type in _META_TYPES and info.size > MAX_META_SIZE:
            raise LayerFormatError(f"tar extended header of {info.size} bytes is too large")
        return info

    # tarfile reads a sparse file's map from the stream, as much as it says there is, and
    # fails on a bad one with whatever the parsing raises: bounded and made a format error.
    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        with _sparse_map_budget(tf):
            return super()._proc_sparse(tf)  # type: ignore[misc]

    def _proc_gnusparse_10(
        self, member: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        with _sparse_map_budget(tf):
            super()._proc_gnusparse_10(member, pax_headers, tf)  # type: ignore[misc]


class _BudgetReader:
    """A tar stream that refuses to hand out more than `left` bytes (a sparse map's)."""

    def __init__(self, raw: Any, left: int) -> None:
        self.raw = raw
        self.left = left

    def read(self, n: int) -> bytes:
        self.left -= n
        if self.left < 0:
            raise LayerFormatError(f"tar sparse map is larger than {MAX_META_SIZE} bytes")
        return cast(bytes, self.raw.read(n))

    def tell(self) -> int:
        return cast(int, self.raw.tell())


@contextlib.contextmanager
def _sparse_map_budget(tf: tarfile.TarFile) -> Iterator[None]:
    raw = tf.fileobj
    tf.fileobj = cast(Any, _BudgetReader(raw, MAX_META_SIZE))
    try:
        yield
    except (ValueError, IndexError) as e:
        if isinstance(e, LayerFormatError):
            raise
        raise LayerFormatError(f"tar sparse map is corrupt or truncated ({e})") from None
    finally:
        tf.fileobj = raw


def _header_problem(buf: bytes, e: Exception) -> str:
    if buf.startswith(b"\x1f\x8b"):
        return "layer is gzip-compressed; apply_layer needs the uncompressed tar"
    if buf.startswith(b"\x28\xb5\x2f\xfd"):
        return "layer is zstd-compressed; apply_layer needs the uncompressed tar"
    if len(buf) < tarfile.BLOCKSIZE:
        return "layer tar is truncated (stream ends inside a header)"
    return f"layer tar is corrupt: bad header ({e})"


class _CountingReader:
    """Counts what tarfile reads, to tell an empty stream from a truncated one."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


def _split(name: str, what: str = "entry") -> RelPath:
    """A tar name as components below dest: leading `/` dropped, `..` resolved lexically."""
    if "\x00" in name:
        raise LayerFormatError(f"tar {what} {name!r} contains a NUL byte")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise UnsafeLayerError(f"tar {what} {name!r} climbs out of the layer root")
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


def _ns(seconds: float | str) -> int:
    try:
        # PAX times are decimal strings; going through Decimal keeps their nanoseconds.
        ns = int(Decimal(seconds) * _NS) if isinstance(seconds, str) else int(seconds * _NS)
    except (InvalidOperation, ValueError, OverflowError):
        return 0
    return max(-_MAX_NS, min(_MAX_NS, ns))


def _times(m: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns; atime is the PAX atime when there is one, else the mtime."""
    pax = m.pax_headers
    mtime = _ns(pax["mtime"]) if "mtime" in pax else _ns(m.mtime)
    atime = _ns(pax["atime"]) if "atime" in pax else mtime
    return atime, mtime


def _write_all(fd: int, data: bytes) -> None:
    done = os.write(fd, data)
    if done < len(data):
        view = memoryview(data)
        while done < len(view):
            done += os.write(fd, view[done:])


class _Applier:
    def __init__(self, root: int, *, native: bool, same_owner: bool, max_size: int) -> None:
        self.root = root
        self.native = native
        self.same_owner = same_owner
        self.max_size = max_size
        self.stats = ApplyStats()
        # Native mode: every path this layer made, and all their ancestors, so an opaque
        # marker removes only what came from lower layers, and a symlink or file where a
        # dir is needed is known to be a lower layer's (replaced) or this one's (followed).
        self.keep: set[RelPath] = set()
        # Overlay mode: the dirs made for entries whose parents the tar does not list.
        self.implicit: set[RelPath] = set()
        self.dir_times: dict[RelPath, tuple[int, int]] = {}
        # The last parent dir opened, by its name in the tar: entries come grouped by
        # directory, so this saves walking from the root for most of them.
        self.cache: tuple[RelPath, int, RelPath] | None = None
        self.cache_ok = False

    def close(self) -> None:
        if self.cache is not None:
            os.close(self.cache[1])
            self.cache = None

    # -- reading the tar ---------------------------------------------------------------

    def run(self, stream: BinaryIO) -> None:
        counter = _CountingReader(stream)
        try:
            tf = tarfile.open(  # noqa: SIM115 (closed below; opening may end the layer)
                fileobj=cast("tarfile._Fileobj", counter),  # read(n) is all "r|" uses
                mode="r|",
                bufsize=TAR_BUFSIZE,
                tarinfo=_LayerTarInfo,
            )
        except _EndOfStream:
            if counter.count:
                raise LayerFormatError(
                    "layer tar is truncated (stream ends after an extended header)"
                ) from None
            return  # an empty stream is an empty layer, as Go's archive/tar reads it
        except tarfile.TarError as e:
            raise LayerFormatError(f"layer is not a tar stream: {e}") from None
        try:
            while True:
                try:
                    member = tf.next()
                except _EndOfStream:
                    # Clean EOF where the next header would start: accepted without the
                    # zero-block end marker, as Go's archive/tar (and so containerd) does.
                    # Past an extended header it is a truncation.
                    if tf.fileobj.tell() != tf.offset:
                        raise LayerFormatError(
                            "layer tar is truncated (stream ends after an extended header)"
                        ) from None
                    break
                except tarfile.TarError as e:
                    raise LayerFormatError(f"layer tar is truncated or corrupt: {e}") from None
                if member is None:
                    break
                tf.members.clear()  # type: ignore[attr-defined]  # else "r|" keeps them all
                self.stats.entries += 1
                try:
                    self.apply(tf, member)
                except OSError as e:
                    e.add_note(f"while applying layer entry {member.name!r}")
                    raise
                except OverflowError as e:  # a device number or time beyond any C type
                    raise LayerFormatError(f"tar entry {member.name!r}: {e}") from None
            self.set_dir_times()
        finally:
            tf.close()  # does not close `stream`

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        path = _split(m.name)
        if not path:
            log.debug("layer entry %r ignored: it names the layer root", m.name)
            return
        if path[0].startswith(WHITEOUT_META_PREFIX) and path != (WHITEOUT_OPAQUE,):
            # aufs's own dirs at the root (.wh..wh.plnk, .wh..wh.orph): not image content.
            log.debug("layer entry %r ignored: aufs metadata", m.name)
            return
        parent, leaf = path[:-1], path[-1]
        if leaf.startswith(WHITEOUT_PREFIX):
            self.whiteout(m.name, parent, leaf)
            return
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isdev()):
            raise LayerFormatError(f"tar entry {m.name!r} has unsupported type {m.type!r}")
        if not (0 <= m.uid < _NO_ID and 0 <= m.gid < _NO_ID):
            raise LayerFormatError(f"tar entry {m.name!r}: owner {m.uid}:{m.gid} out of range")
        if "\x00" in m.linkname:
            raise LayerFormatError(f"tar entry {m.name!r}: link target contains a NUL byte")
        pfd, phys = self.parent(parent, m.name)
        if m.isreg():
            self.file(tf, m, pfd, leaf)
        elif m.isdir():
            self.directory(m, pfd, leaf, (*phys, leaf))
        elif m.issym():  # the target is just data: it may point anywhere
            self.create(pfd, leaf, lambda: os.symlink(m.linkname, leaf, dir_fd=pfd))
            self.meta_at(pfd, leaf, m, symlink=True)
        elif m.islnk():
            if not self.hardlink(m, pfd, phys, leaf):
                return
        elif not self.special(m, pfd, leaf):  # char, block, fifo
            return
        self.track((*phys, leaf))

    # -- entries ---------------------------------------------------------------------------

    def file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, leaf: str) -> None:
        if self.max_size and self.stats.bytes + m.size > self.max_size:
            raise LayerTooLargeError(
                f"layer unpacks to more than {self.max_size} bytes "
                f"(images.max_unpacked_layer_size): entry {m.name!r} of {m.size} bytes "
                f"would bring it to {self.stats.bytes + m.size}"
            )
        fd = self.create(pfd, leaf, lambda: os.open(leaf, _O_NEWFILE, 0o600, dir_fd=pfd))
        try:
            if m.sparse is not None:
                self.sparse(tf, m, fd)
            elif self.copy(tf.fileobj.read, fd, m.size, m.name):  # the stream is at its data
                os.ftruncate(fd, m.size)  # it ends in a hole
            self.stats.bytes += m.size
            if self.same_owner:
                os.fchown(fd, m.uid, m.gid)
            self.xattrs(fd, m)  # after chown, which clears security.capability
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=_times(m))
        finally:
            os.close(fd)

    @staticmethod
    def copy(read: Callable[[int], bytes], fd: int, size: int, name: str) -> bool:
        """Copy `size` bytes of entry data to fd's offset; whole chunks of zeros become
        holes. True when the data ends in a hole (the file must be extended to its size)."""
        hole = False
        while size > 0:
            chunk = read(min(size, CHUNK))
            if not chunk:
                raise LayerFormatError(
                    f"layer tar is truncated (stream ends inside the data of {name!r})"
                )
            n = len(chunk)
            # The end bytes first: data that is not all zeros is rarely compared in full.
            if n >= _MIN_HOLE and not chunk[0] and not chunk[-1] and chunk == _ZEROS[:n]:
                os.lseek(fd, n, os.SEEK_CUR)
                hole = True
            else:
                _write_all(fd, chunk)
                hole = False
            size -= n
        return hole

    def sparse(self, tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
        """A GNU or PAX sparse entry: only its data blocks are written, the rest are holes."""
        smap = cast("list[tuple[int, int]]", m.sparse)  # (offset, size) of each data block
        stored = tf.offset - m.offset_data  # its data in the archive, padding included
        end = total = 0
        for offset, size in smap:
            if not size:
                continue  # old GNU headers pad the map with (0, 0)
            if offset < end or size < 0 or offset + size > m.size:
                raise LayerFormatError(f"tar entry {m.name!r}: corrupt sparse map")
            end, total = offset + size, total + size
        if total > stored:
            raise LayerFormatError(f"tar entry {m.name!r}: sparse map exceeds the stored data")
        if tf.fileobj.tell() != m.offset_data:
            tf.fileobj.seek(m.offset_data)  # forward only: past a sparse 1.0 map
        for offset, size in smap:
            if size:
                os.lseek(fd, offset, os.SEEK_SET)
                self.copy(tf.fileobj.read, fd, size, m.name)
        os.ftruncate(fd, m.size)

    def directory(self, m: tarfile.TarInfo, pfd: int, leaf: str, path: RelPath) -> None:
        try:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not self.clear(pfd, leaf, keep_dir=True):
                os.mkdir(leaf, 0o700, dir_fd=pfd)
        fd = os.open(leaf, _O_DIR, dir_fd=pfd)
        try:
            if self.same_owner:
                os.fchown(fd, m.uid, m.gid)
            self.xattrs(fd, m)
            os.fchmod(fd, m.mode & 0o7777)
        finally:
            os.close(fd)
        # Writing the dir's contents changes its mtime, so times are set at the very end.
        self.dir_times[path] = _times(m)
        self.implicit.discard(path)  # listed after all: its own metadata holds

    def hardlink(self, m: tarfile.TarInfo, pfd: int, phys: RelPath, leaf: str) -> bool:
        target = _split(m.linkname, "hardlink target")
        if not target:
            raise LayerFormatError(f"hardlink {m.name!r} points at the layer root")
        # No symlink may be followed on the way to a hardlink's target, not even inside
        # dest: the link would then share an inode chosen by someone else's symlink.
        found = self.walk(target[:-1], m.name, create=False, follow=False)
        if found is None:
            raise LayerFormatError(f"hardlink {m.name!r}: target {m.linkname!r} does not exist")
        tfd, tphys = found
        tleaf = target[-1]
        try:
            try:
                st = os.stat(tleaf, dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerFormatError(
                    f"hardlink {m.name!r}: target {m.linkname!r} does not exist"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise LayerFormatError(f"hardlink {m.name!r}: target {m.linkname!r} is a dir")
            if self.native and (*tphys, tleaf) not in self.keep:
                # A lower layer's file: containerd (and overlay mode) link within the layer
                # being applied only.
                raise LayerFormatError(
                    f"hardlink {m.name!r}: target {m.linkname!r} does not exist in this layer"
                )
            if tphys == phys and tleaf == leaf:
                return False  # a link to itself: nothing to do
            # follow_symlinks=False: a link to a symlink links the symlink, not its target.
            self.create(
                pfd,
                leaf,
                lambda: os.link(tleaf, leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False),
            )
        finally:
            close_unless_root(tfd, self.root)
        return True  # the inode's metadata came with its first name

    def special(self, m: tarfile.TarInfo, pfd: int, leaf: str) -> bool:
        if m.isfifo():
            self.create(pfd, leaf, lambda: os.mkfifo(leaf, 0o600, dir_fd=pfd))
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            try:
                self.create(pfd, leaf, lambda: os.mknod(leaf, kind | 0o600, dev, dir_fd=pfd))
            except PermissionError:
                # No CAP_MKNOD (a user namespace): the runtime gives containers their
                # devices anyway, so losing one from the image must not fail the pull.
                log.warning("layer entry %r: no permission to create a device; skipped", m.name)
                return False
        self.meta_at(pfd, leaf, m, symlink=False)
        return True

    # -- whiteouts -------------------------------------------------------------------------

    def whiteout(self, name: str, parent: RelPath, leaf: str) -> None:
        if leaf == WHITEOUT_OPAQUE:
            fd, phys = self.parent(parent, name)  # the opaque dir itself
            if self.native:
                self.prune(phys)
            else:
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        if leaf.startswith(WHITEOUT_META_PREFIX):
            log.debug("layer entry %r ignored: whiteout metadata", name)
            return
        victim = leaf[len(WHITEOUT_PREFIX) :]
        if victim in (".", ".."):
            raise UnsafeLayerError(f"whiteout {name!r} would remove a parent directory")
        if not victim:
            raise LayerFormatError(f"whiteout {name!r} names no file")
        # The parent is made if missing, in both modes, as containerd does (and overlay
        # mode must: the whiteout is a file in it).
        pfd, _ = self.parent(parent, name)
        if self.native:
            self.clear(pfd, victim, keep_dir=False)
        else:
            self.create(
                pfd, victim, lambda: os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            )

    def prune(self, top: RelPath) -> None:
        """Native opaque dir: remove everything below `top` that this layer did not make."""
        todo = [top]
        while todo:
            rel = todo.pop()
            found = self.walk(rel, "/".join(rel), create=False, follow=False)
            if found is None:
                continue
            fd = found[0]
            try:
                with os.scandir(fd) as it:
                    children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                for child, is_dir in children:
                    path = (*rel, child)
                    if path in self.keep:
                        if is_dir:
                            todo.append(path)  # made here, but may hold lower files
                    elif is_dir:
                        shutil.rmtree(child, dir_fd=fd)
                        self.cache_ok = False
                    else:
                        os.unlink(child, dir_fd=fd)
                        self.cache_ok = False
            finally:
                close_unless_root(fd, self.root)

    # -- paths -----------------------------------------------------------------------------

    def parent(self, parts: RelPath, name: str) -> tuple[int, RelPath]:
        """Open (making what is missing) the dir an entry's tar name puts it in.

        Returns (fd, the dir's real path below the root); the fd belongs to the cache.
        """
        found = self._parent(parts, name, create=True)
        assert found is not None
        return found

    def _parent(self, parts: RelPath, name: str, create: bool) -> tuple[int, RelPath] | None:
        if self.cache is not None:
            if self.cache_ok and self.cache[0] == parts:
                return self.cache[1], self.cache[2]
            os.close(self.cache[1])
            self.cache = None
        found = self.walk(parts, name, create=create, follow=True)
        if found is None:
            return None
        fd, phys = found
        if fd == self.root:
            fd = os.dup(self.root)
        self.cache, self.cache_ok = (parts, fd, phys), True
        return fd, phys

    def walk(
        self, parts: Sequence[str], name: str, *, create: bool, follow: bool
    ) -> tuple[int, RelPath] | None:
        """walk_beneath() from the layer root; `create` makes missing dirs as tar does."""
        return walk_beneath(
            self.root,
            parts,
            f"layer entry {name!r}",
            follow=follow,
            make=self.mkdir_implicit if create else None,
            replace=self.from_below if create and self.native else None,
        )

    def from_below(self, path: RelPath) -> bool:
        """Native mode: is the node at `path` a lower layer's (not made by this one)?"""
        return path not in self.keep

    def mkdir_implicit(self, pfd: int, comp: str, path: RelPath) -> int:
        """A parent dir the tar did not list: 0755 root-owned, as containerd makes them
        (overlay mode logs it, to take the mode and owner of a lower layer's dir later)."""
        os.mkdir(comp, 0o755, dir_fd=pfd)
        fd = os.open(comp, _O_DIR, dir_fd=pfd)
        try:
            os.fchmod(fd, 0o755)  # whatever the umask (which is per process, not ours to set)
        except BaseException:
            os.close(fd)
            raise
        self.track(path)
        if not self.native:
            self.implicit.add(path)
        return fd

    def write_implicit_log(self, path: str) -> None:
        names = sorted("/".join(p) for p in self.implicit)  # parents before children
        data = "\0".join(names).encode("utf-8", "surrogateescape")
        with open(path, "wb") as f:
            f.write(data)

    def track(self, path: RelPath) -> None:
        if self.native:
            while path and path not in self.keep:  # a path's ancestors are always in
                self.keep.add(path)
                path = path[:-1]

    # -- making and removing leaves --------------------------------------------------------

    def create(self, pfd: int, leaf: str, make: Callable[[], T]) -> T:
        """Run `make` (which must fail if `leaf` exists); replace what is in the way."""
        try:
            return make()
        except FileExistsError:
            self.clear(pfd, leaf, keep_dir=False)
            return make()

    def clear(self, pfd: int, leaf: str, *, keep_dir: bool) -> bool:
        """Remove `leaf` (a whole tree for a dir) unless it is a dir and keep_dir.

        Returns True when a dir was kept. Never follows a symlink at `leaf`.
        """
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(leaf, dir_fd=pfd)  # fd-based: never follows symlinks inside
        else:
            os.unlink(leaf, dir_fd=pfd)
        if not stat.S_ISREG(st.st_mode):
            self.cache_ok = False  # a dir or symlink may be part of the cached path
        return False

    # -- metadata --------------------------------------------------------------------------

    def meta_at(self, pfd: int, leaf: str, m: tarfile.TarInfo, *, symlink: bool) -> None:
        """Owner, xattrs, mode and times of a node that must not be opened (dev, fifo, link)."""
        if self.same_owner:
            os.chown(leaf, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if m.pax_headers:
            self.xattrs(f"/proc/self/fd/{pfd}/{leaf}", m)
        if not symlink:  # a symlink's mode means nothing on Linux and cannot be set
            try:
                os.chmod(leaf, m.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
            except (NotImplementedError, ValueError):
                # Old libc without fchmodat(AT_SYMLINK_NOFOLLOW): chmod through an O_PATH fd.
                fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    os.chmod(f"/proc/self/fd/{fd}", m.mode & 0o7777)
                finally:
                    os.close(fd)
        os.utime(leaf, ns=_times(m), dir_fd=pfd, follow_symlinks=False)

    def xattrs(self, target: int | str, m: tarfile.TarInfo) -> None:
        """Set the SCHILY.xattr.* PAX records on `target`: an fd, or a path not followed."""
        for key, raw in m.pax_headers.items():
            if not key.startswith(_PAX_XATTR):
                continue
            attr = key[len(_PAX_XATTR) :]
            if attr.startswith(_FORBIDDEN_XATTRS):
                log.warning("layer entry %r: xattr %s dropped", m.name, attr)
                continue
            value = raw.encode("utf-8", "surrogateescape")  # tarfile's decoding, undone
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, value)
                else:
                    os.setxattr(target, attr, value, follow_symlinks=False)
            except OSError as e:
                # containerd skips these too: SELinux labels the host sets itself, xattrs
                # the filesystem lacks, and user.* on symlinks and devices.
                tolerated = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP)
                if attr != "security.selinux" and e.errno not in tolerated:
                    raise
                log.warning("layer entry %r: xattr %s not set: %s", m.name, attr, e.strerror)

    def set_dir_times(self) -> None:
        """Give dirs their tar times, now that nothing more is written into them."""
        # Deepest first; siblings sort together so each parent is opened once.
        order = sorted(self.dir_times.items(), key=lambda kv: (-len(kv[0]), kv[0]))
        pfd, pparts = self.root, cast(RelPath, ())
        try:
            for path, ns in order:
                if path[:-1] != pparts:
                    close_unless_root(pfd, self.root)
                    pfd, pparts = self.root, ()
                    try:
                        found = self.walk(path[:-1], "/".join(path), create=False, follow=False)
                    except LayerFormatError:
                        continue  # replaced by a symlink or file later in the layer
                    if found is None:
                        continue  # removed by a later whiteout
                    pfd, pparts = found[0], path[:-1]
                try:
                    st = os.stat(path[-1], dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.utime(path[-1], ns=ns, dir_fd=pfd, follow_symlinks=False)
        finally:
            close_unless_root(pfd, self.root)
