"""Layer tars built entry by entry, hostile ones included, for the unpacker's tests.

tarfile writes whatever it is given (absolute names, `..`, links pointing anywhere, forged
xattrs), so these are the layers a malicious registry could serve.
"""

from __future__ import annotations

import io
import posixpath
import tarfile

EPOCH = 1704067200  # 2024-01-01T00:00:00Z


class OneWayReader:
    """A stream that can only be read forward, in pieces of at most `piece` bytes.

    It has no seek or tell, so an unpacker that tries to seek fails; short reads check
    that the reader copes with a network-like stream. `consumed` counts what was read.
    """

    def __init__(self, data: bytes, piece: int = 1 << 30) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._piece = piece
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data)
        n = min(n, self._piece)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        self.consumed += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True


class TarBuilder:
    """Appends raw tar entries; names and link targets are written exactly as given."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT, mtime: float = EPOCH) -> None:
        self._buf = io.BytesIO()
        self._tf = tarfile.open(fileobj=self._buf, mode="w", format=fmt)  # noqa: SIM115
        self._mtime = mtime

    def _info(
        self,
        name: str,
        kind: bytes,
        mode: int,
        uid: int,
        gid: int,
        mtime: float | None,
        xattrs: dict[str, bytes] | None,
        pax: dict[str, str] | None,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self._mtime if mtime is None else mtime
        headers = dict(pax or {})
        for key, value in (xattrs or {}).items():
            # tarfile writes str values; surrogates stand for the non-UTF-8 bytes.
            headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = headers
        return info

    def add(self, info: tarfile.TarInfo, data: bytes | None = None) -> TarBuilder:
        if data is not None:
            info.size = len(data)
        self._tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def file(
        self,
        name: str,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        xattrs: dict[str, bytes] | None = None,
        pax: dict[str, str] | None = None,
    ) -> TarBuilder:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime, xattrs, pax)
        return self.add(info, data)

    def dir(
        self,
        name: str,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: float | None = None,
        xattrs: dict[str, bytes] | None = None,
    ) -> TarBuilder:
        return self.add(self._info(name, tarfile.DIRTYPE, mode, uid, gid, mtime, xattrs, None))

    def symlink(
        self, name: str, target: str, uid: int = 0, gid: int = 0, mtime: float | None = None
    ) -> TarBuilder:
        info = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime, None, None)
        info.linkname = target
        return self.add(info)

    def hardlink(self, name: str, target: str) -> TarBuilder:
        info = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0, None, None, None)
        info.linkname = target
        return self.add(info)

    def device(
        self, name: str, kind: bytes, major: int, minor: int, mode: int = 0o600
    ) -> TarBuilder:
        info = self._info(name, kind, mode, 0, 0, None, None, None)
        info.devmajor, info.devminor = major, minor
        return self.add(info)

    def fifo(self, name: str, mode: int = 0o644) -> TarBuilder:
        return self.add(self._info(name, tarfile.FIFOTYPE, mode, 0, 0, None, None, None))

    def whiteout(self, path: str) -> TarBuilder:
        head, base = posixpath.split(path)
        return self.file(posixpath.join(head, ".wh." + base))

    def opaque(self, dirpath: str) -> TarBuilder:
        return self.file(posixpath.join(dirpath, ".wh..wh..opq"))

    def raw(self, data: bytes) -> TarBuilder:
        """Append bytes made by hand (whole 512-byte blocks)."""
        assert len(data) % tarfile.BLOCKSIZE == 0
        self._buf.write(data)
        self._tf.offset += len(data)  # keeps close() aligned
        return self

    def gnu_sparse(self, name: str, segments: list[tuple[int, bytes]], realsize: int) -> TarBuilder:
        """An old-style GNU sparse file ('S'): only `segments` (offset, data) are stored."""
        assert len(segments) <= 4  # what fits in the header without extension blocks
        data = b"".join(chunk for _, chunk in segments)
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mtime, info.mode = (
            tarfile.GNUTYPE_SPARSE,
            len(data),
            EPOCH,
            0o644,
        )
        header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        for i, (offset, chunk) in enumerate(segments):
            at = 386 + 24 * i
            header[at : at + 24] = b"%011o\0%011o\0" % (offset, len(chunk))
        header[483:495] = b"%011o\0" % realsize
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        pad = -len(data) % tarfile.BLOCKSIZE
        return self.raw(bytes(header) + data + bytes(pad))

    def tar(self, end_marker: bool = True) -> bytes:
        """The archive; without end_marker it stops right after the last entry."""
        if not end_marker:
            return self._buf.getvalue()
        self._tf.close()
        return self._buf.getvalue()


class ZeroFileStream:
    """A tar stream of one regular file `name` of `size` zero bytes, made as it is read.

    A decompression bomb as the unpacker sees it (gigabytes from a few KiB of gzip),
    without holding it in memory. `consumed` counts the bytes handed out.
    """

    def __init__(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, EPOCH, 0o644
        self._head = info.tobuf(tarfile.PAX_FORMAT)
        self._left = size + (-size % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        n = n if n >= 0 else 1 << 20
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
        else:
            k = min(n, self._left, 1 << 20)
            self._left -= k
            out = bytes(k)
        self.consumed += len(out)
        return out

    def readable(self) -> bool:
        return True
