"""apply_layer: entry types and metadata, whiteouts in both modes, and hostile layers."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crispy.images.unpack import (
    DEFAULT_MAX_LAYER_SIZE,
    OVERLAY_OPAQUE_XATTR,
    ApplyStats,
    LayerFormatError,
    LayerTooLargeError,
    UnsafeLayerError,
    apply_layer,
)
from support.hostile import EPOCH, OneWayReader, TarBuilder, ZeroFileStream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")

NS = 1_000_000_000


def apply(data: bytes, dest: Path, piece: int = 1 << 30, **kw: Any) -> ApplyStats:
    """Apply through a forward-only reader and check every byte of it was consumed."""
    reader = OneWayReader(data, piece)
    stats = apply_layer(reader, str(dest), **kw)  # type: ignore[arg-type]
    assert reader.consumed == len(data)
    return stats


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


def xattrs(path: Path) -> dict[str, bytes]:
    return {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path)}


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


# -- entry types and metadata ------------------------------------------------------------


def test_regular_files_modes_owners_times(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("bin", mode=0o755)
        .file("bin/su", b"su", mode=0o4755, uid=1000, gid=1001, mtime=EPOCH + 5)
        .file("bin/wall", b"wall", mode=0o2755, uid=0, gid=5)
        .file("etc/empty", b"", mode=0o600)
        .file("big", os.urandom(3 * (1 << 20) + 7), mode=0o640)
        .dir("tmp", mode=0o1777)
        .tar()
    )
    stats = apply(layer, dest)
    st = os.lstat(dest / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755  # chown did not strip setuid
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert st.st_mtime_ns == (EPOCH + 5) * NS
    assert stat.S_IMODE(os.lstat(dest / "bin/wall").st_mode) == 0o2755
    assert os.lstat(dest / "bin/wall").st_gid == 5
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    assert (dest / "bin/su").read_bytes() == b"su"
    assert (dest / "etc/empty").read_bytes() == b""
    assert stat.S_IMODE(os.lstat(dest / "etc").st_mode) == 0o755  # implicit parent
    assert os.path.getsize(dest / "big") == 3 * (1 << 20) + 7
    assert stats.entries == 6
    assert stats.bytes == 2 + 4 + 3 * (1 << 20) + 7


def test_file_data_is_exact_with_short_reads(dest: Path) -> None:
    blob = os.urandom(2 * (1 << 20) + 12345)
    layer = TarBuilder().file("a", blob).file("b", b"x" * 513).tar()
    apply(layer, dest, piece=4093)  # the stream hands out odd-sized pieces
    assert hashlib.sha256((dest / "a").read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert (dest / "b").read_bytes() == b"x" * 513


def test_dir_times_set_after_contents(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("d", mtime=EPOCH + 1)
        .dir("d/e", mtime=EPOCH + 2)
        .file("d/e/f", b"1", mtime=EPOCH + 3)
        .file("d/g", b"2", mtime=EPOCH + 4)
        .tar()
    )
    apply(layer, dest)
    assert os.lstat(dest / "d").st_mtime_ns == (EPOCH + 1) * NS
    assert os.lstat(dest / "d/e").st_mtime_ns == (EPOCH + 2) * NS
    assert os.lstat(dest / "d/e/f").st_mtime_ns == (EPOCH + 3) * NS


def test_pax_subsecond_times_and_atime(dest: Path) -> None:
    pax = {"mtime": "1704067200.123456789", "atime": "1704067300.5"}
    apply(TarBuilder().file("f", b"x", pax=pax).tar(), dest)
    st = os.lstat(dest / "f")
    assert st.st_mtime_ns == 1704067200_123456789
    assert st.st_atime_ns == 1704067300_500000000


def test_symlinks(dest: Path) -> None:
    layer = (
        TarBuilder()
        .symlink("rel", "../usr/lib", uid=7, gid=8, mtime=EPOCH + 9)
        .symlink("abs", "/etc/passwd")
        .tar()
    )
    apply(layer, dest)
    assert os.readlink(dest / "rel") == "../usr/lib"
    assert os.readlink(dest / "abs") == "/etc/passwd"
    st = os.lstat(dest / "rel")
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert st.st_mtime_ns == (EPOCH + 9) * NS


def test_hardlinks(dest: Path) -> None:
    layer = (
        TarBuilder()
        .file("usr/bin/a", b"data", mode=0o755)
        .hardlink("usr/bin/b", "usr/bin/a")
        .hardlink("c", "/usr/bin/a")  # absolute link names are layer-relative too
        .tar()
    )
    apply(layer, dest)
    a, b, c = (os.lstat(dest / p) for p in ("usr/bin/a", "usr/bin/b", "c"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert a.st_nlink == 3


def test_hardlink_to_symlink_links_the_symlink(dest: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside-file"
    outside.write_text("host")
    layer = TarBuilder().symlink("s", str(outside)).hardlink("h", "s").tar()
    apply(layer, dest)
    assert os.path.islink(dest / "h")
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "s").st_ino
    assert os.lstat(outside).st_nlink == 1


def test_devices_and_fifo(dest: Path) -> None:
    layer = (
        TarBuilder()
        .device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
        .device("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660)
        .fifo("run/fifo", mode=0o620)
        .tar()
    )
    apply(layer, dest)
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dest / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
    st = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


def test_device_without_permission_is_skipped(
    dest: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_mknod(*args: Any, **kw: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", no_mknod)
    layer = TarBuilder().device("dev/null", tarfile.CHRTYPE, 1, 3).file("ok", b"1").tar()
    apply(layer, dest)
    assert not os.path.lexists(dest / "dev/null")
    assert (dest / "ok").read_bytes() == b"1"
    assert "dev/null" in caplog.text


def test_gnu_sparse_file(dest: Path) -> None:
    layer = (
        TarBuilder(fmt=tarfile.GNU_FORMAT)
        .gnu_sparse("sparse", [(0, b"A" * 10), (100_000, b"B" * 5)], 200_000)
        .file("after", b"ok")
        .tar()
    )
    stats = apply(layer, dest)
    data = (dest / "sparse").read_bytes()
    assert len(data) == 200_000 and stats.bytes == 200_002
    assert data[:10] == b"A" * 10 and data[100_000:100_005] == b"B" * 5
    assert data.count(0) == 200_000 - 15
    assert (dest / "after").read_bytes() == b"ok"


def test_xattrs(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("d", xattrs={"user.dir": b"yes", OVERLAY_OPAQUE_XATTR: b"y"})
        .file(
            "f",
            b"x",
            mode=0o4755,
            uid=1000,
            xattrs={"user.bin": b"\x00\xff\n=", "trusted.overlay.redirect": b"/etc"},
        )
        .tar()
    )
    apply(layer, dest)
    assert xattrs(dest / "d") == {"user.dir": b"yes"}  # the forged opaque marker is gone
    assert xattrs(dest / "f") == {"user.bin": b"\x00\xff\n="}
    assert stat.S_IMODE(os.lstat(dest / "f").st_mode) == 0o4755


def test_same_owner_false_keeps_our_ids(dest: Path) -> None:
    apply(TarBuilder().file("f", b"x", uid=1234, gid=4321).tar(), dest, same_owner=False)
    st = os.lstat(dest / "f")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names(dest: Path, fmt: int) -> None:
    deep = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    layer = (
        TarBuilder(fmt=fmt)
        .file(deep, b"deep")
        .symlink("s" * 150, "t" * 300)
        .hardlink("h" * 120, deep)
        .tar()
    )
    apply(layer, dest)
    assert (dest / deep).read_bytes() == b"deep"
    assert os.readlink(dest / ("s" * 150)) == "t" * 300
    assert os.lstat(dest / ("h" * 120)).st_ino == os.lstat(dest / deep).st_ino


def test_non_utf8_name(dest: Path) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    apply(TarBuilder(fmt=tarfile.GNU_FORMAT).file(name, b"x").tar(), dest)
    assert os.listdir(os.fsencode(dest)) == [b"caf\xe9"]


# -- replacing what is there ----------------------------------------------------------


def test_replacements_within_a_layer(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("a")
        .file("a/inner", b"1")
        .file("a", b"now a file")  # file replaces a dir tree
        .file("b", b"was a file")
        .dir("b", mode=0o700)  # dir replaces a file
        .dir("c", mode=0o755)
        .file("c/keep", b"k")
        .dir("c", mode=0o711, uid=3)  # dir over dir: contents stay, metadata updates
        .symlink("d", "somewhere")
        .file("d", b"not a link")
        .file("e", b"old")
        .file("e", b"new")
        .tar()
    )
    apply(layer, dest)
    assert (dest / "a").read_bytes() == b"now a file"
    assert (dest / "b").is_dir() and stat.S_IMODE(os.lstat(dest / "b").st_mode) == 0o700
    assert (dest / "c/keep").read_bytes() == b"k"
    st = os.lstat(dest / "c")
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_uid == 3
    assert not os.path.islink(dest / "d") and (dest / "d").read_bytes() == b"not a link"
    assert (dest / "e").read_bytes() == b"new"


def test_replacing_a_hardlinked_file_leaves_the_other_name(dest: Path) -> None:
    layer = TarBuilder().file("a", b"shared").hardlink("b", "a").file("b", b"own").tar()
    apply(layer, dest)
    assert (dest / "a").read_bytes() == b"shared"
    assert (dest / "b").read_bytes() == b"own"


# -- whiteouts: overlay ---------------------------------------------------------------


def test_overlay_whiteouts(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("etc")
        .whiteout("etc/gone")
        .whiteout("deep/er/gone")  # parents are made for it
        .opaque("var/cache")  # dir made for the marker
        .dir("opt")
        .opaque("opt")
        .file("opt/new", b"n")
        .file(".wh..wh.plnk/123", b"")  # aufs hardlink dir: a plain dir in the layer
        .file("etc/.wh..wh.aufs", b"")  # other metadata: skipped
        .tar()
    )
    apply(layer, dest, mode="overlay")
    assert is_whiteout(dest / "etc/gone")
    assert is_whiteout(dest / "deep/er/gone")
    assert os.getxattr(dest / "var/cache", OVERLAY_OPAQUE_XATTR) == b"y"
    assert os.getxattr(dest / "opt", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (dest / "opt/new").read_bytes() == b"n"
    assert not [p for p in tree(dest) if os.path.basename(p).startswith(".wh.")]


def test_overlay_whiteout_replaces_same_layer_entry(dest: Path) -> None:
    apply(TarBuilder().file("x", b"1").whiteout("x").tar(), dest, mode="overlay")
    assert is_whiteout(dest / "x")


def test_overlay_layers_mount_as_the_image(tmp_path: Path) -> None:
    """The kernel reads what overlay mode writes: whiteouts hide, opaque dirs replace."""
    l1, l2, merged = tmp_path / "l1", tmp_path / "l2", tmp_path / "m"
    for d in (l1, l2, merged):
        d.mkdir()
    b1 = TarBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"b")
    apply(b1.dir("opt").file("opt/old", b"o").file("opt/sub/x", b"x").tar(), l1)
    b2 = TarBuilder().dir("etc").whiteout("etc/a").dir("opt").opaque("opt")
    apply(b2.file("opt/new", b"n").tar(), l2)
    opts = f"lowerdir={l2}:{l1}"
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount overlayfs here")
    try:
        assert tree(merged) == {"etc", "etc/b", "opt", "opt/new"}
    finally:
        subprocess.run(["umount", str(merged)], check=True)


# -- whiteouts: native ----------------------------------------------------------------


def lower(dest: Path) -> None:
    """What the parent layers left in a native-mode dest."""
    (dest / "etc").mkdir()
    (dest / "etc/passwd").write_text("root")
    (dest / "etc/gone").write_text("x")
    (dest / "usr/share/doc/pkg").mkdir(parents=True)
    (dest / "usr/share/doc/pkg/README").write_text("r")
    (dest / "opq/keepme/sub").mkdir(parents=True)
    (dest / "opq/old").write_text("old")
    (dest / "opq/keepme/lowerfile").write_text("lower")
    (dest / "opq/keepme/sub/deeper").write_text("lower")
    (dest / "opq/link").symlink_to("/etc")


def test_native_whiteouts_remove(dest: Path) -> None:
    lower(dest)
    before = tree(dest)
    layer = (
        TarBuilder()
        .whiteout("etc/gone")
        .whiteout("usr/share/doc")  # a whole tree
        .whiteout("nothing/here")  # missing is fine; its dir is made, as overlay mode shows
        .whiteout("etc/missing")
        .tar()
    )
    apply(layer, dest, mode="native")
    gone = {"etc/gone", "usr/share/doc", "usr/share/doc/pkg", "usr/share/doc/pkg/README"}
    assert tree(dest) == (before - gone) | {"nothing"}
    assert not any((dest / "nothing").iterdir())


@pytest.mark.parametrize("marker_first", [True, False])
def test_native_opaque_keeps_this_layers_entries(dest: Path, marker_first: bool) -> None:
    lower(dest)
    b = TarBuilder()
    if marker_first:
        b.dir("opq").opaque("opq")
    b.file("opq/new", b"n").dir("opq/keepme").file("opq/keepme/mine", b"m")
    b.file("opq/implicit/dir/file", b"i")
    if not marker_first:
        b.opaque("opq")
    apply(b.tar(), dest, mode="native")
    assert tree(dest / "opq") == {
        "new",
        "keepme",
        "keepme/mine",
        "implicit",
        "implicit/dir",
        "implicit/dir/file",
    }
    assert (dest / "etc/passwd").read_text() == "root"  # outside the opaque dir
    assert not list(dest.glob("**/.wh.*"))


def test_native_whiteout_then_recreate_same_dir(dest: Path) -> None:
    lower(dest)
    layer = (
        TarBuilder()
        .file("usr/share/doc/pkg/NEW", b"1")
        .whiteout("usr/share")  # removes the dir the previous entry went into
        .file("usr/share/doc/pkg/AGAIN", b"2")
        .tar()
    )
    apply(layer, dest, mode="native")
    assert tree(dest / "usr") == {"share", "share/doc", "share/doc/pkg", "share/doc/pkg/AGAIN"}


# -- malformed streams ----------------------------------------------------------------


def test_empty_stream_and_empty_tar(dest: Path) -> None:
    assert apply(b"", dest) == ApplyStats(0, 0)
    assert apply(TarBuilder().tar(), dest) == ApplyStats(0, 0)
    assert os.listdir(dest) == []


def test_missing_end_marker_is_accepted_like_go(dest: Path) -> None:
    apply(TarBuilder().file("a", b"1").tar(end_marker=False), dest)
    assert (dest / "a").read_bytes() == b"1"


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda n: 512 + 100, id="inside-data"),
        pytest.param(lambda n: 512 + 1000, id="inside-padding"),
        pytest.param(lambda n: 1536 + 200, id="inside-header"),
        pytest.param(lambda n: 100, id="inside-first-header"),
    ],
)
def test_truncated_stream(dest: Path, cut: Any) -> None:
    layer = TarBuilder(fmt=tarfile.USTAR_FORMAT).file("a", b"x" * 1000).file("b", b"y").tar()
    with pytest.raises(LayerFormatError, match="truncated"):
        apply(layer[: cut(len(layer))], dest)


@pytest.mark.parametrize("first", [False, True])
def test_truncated_after_pax_header(dest: Path, first: bool) -> None:
    b = TarBuilder()
    if not first:
        b.file("a", b"1")
    start = len(b.tar(end_marker=False))
    layer = b.file("p" * 150, b"x").tar()
    with pytest.raises(LayerFormatError, match="truncated"):
        apply(layer[: start + 1024], dest)  # the PAX header, then nothing


def test_corrupt_and_compressed_streams(dest: Path) -> None:
    layer = bytearray(TarBuilder(fmt=tarfile.USTAR_FORMAT).file("a", b"1").file("b", b"2").tar())
    layer[1024 + 148] ^= 0xFF  # the second header's checksum
    with pytest.raises(LayerFormatError, match="corrupt"):
        apply(bytes(layer), dest)
    with pytest.raises(LayerFormatError, match="gzip"):
        apply(b"\x1f\x8b\x08" + bytes(600), dest)


def test_out_of_range_numbers(dest: Path) -> None:
    with pytest.raises(LayerFormatError, match="out of range"):
        apply(TarBuilder(fmt=tarfile.GNU_FORMAT).file("f", b"", uid=1 << 40).tar(), dest)
    big_dev = TarBuilder(fmt=tarfile.GNU_FORMAT).device("d", tarfile.CHRTYPE, 1 << 40, 0)
    with pytest.raises(LayerFormatError, match="'d'"):
        apply(big_dev.tar(), dest)


def test_nul_in_pax_names(dest: Path) -> None:
    with pytest.raises(LayerFormatError, match="NUL"):
        apply(TarBuilder().file("f", b"", pax={"path": "a\x00b"}).tar(), dest)
    with pytest.raises(LayerFormatError, match="NUL"):
        apply(TarBuilder().symlink("s", "x").file("g", b"", pax={"linkpath": "t\x00"}).tar(), dest)


def test_oversized_pax_header(dest: Path) -> None:
    layer = TarBuilder().file("f", b"", pax={"comment": "x" * (1 << 20)}).tar()
    with pytest.raises(LayerFormatError, match="too large"):
        apply(layer, dest)


def test_unsupported_entry_type(dest: Path) -> None:
    info = tarfile.TarInfo("vol")
    info.type = b"V"
    with pytest.raises(LayerFormatError, match="unsupported"):
        apply(TarBuilder().add(info).tar(), dest)


@pytest.fixture
def fast_dest(tmp_path: Path) -> Iterator[Path]:
    """A dest on tmpfs when there is one: creating 10,000 files on a VM's disk takes seconds."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="crispy-unpack-") as d:
        yield Path(d)


def test_no_fd_leak_over_many_entries(fast_dest: Path) -> None:
    dest = fast_dest
    b = TarBuilder(fmt=tarfile.USTAR_FORMAT)
    for i in range(100):
        b.dir(f"d{i}")
        for j in range(100):
            b.file(f"d{i}/f{j}", b"x")
    layer = b.tar()
    before = len(os.listdir("/proc/self/fd"))
    stats = apply(layer, dest)
    assert stats.entries == 10_100
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(UnsafeLayerError):
        apply(TarBuilder().file("a/b/c/d", b"").file("../x", b"").tar(), dest)
    assert len(os.listdir("/proc/self/fd")) == before


# -- hostile layers -------------------------------------------------------------------


@dataclass
class Box:
    """A dest with things outside it that no layer may touch."""

    tmp: Path
    dest: Path
    outside: Path

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        seen: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp):
            if Path(dirpath) == self.dest.parent:
                dirnames.remove(self.dest.name)
            for name in [*dirnames, *filenames, "."]:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                body: object = None
                if stat.S_ISREG(st.st_mode):
                    body = Path(p).read_bytes()
                elif stat.S_ISLNK(st.st_mode):
                    body = os.readlink(p)
                keep = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns, body)
                seen[os.path.normpath(p)] = keep
        for host in ("/etc/passwd", "/etc"):
            st = os.lstat(host)
            content = Path(host).read_bytes() if host == "/etc/passwd" else None
            seen[host] = (st.st_mode, st.st_uid, st.st_nlink, st.st_mtime_ns, content)
        return seen


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim").write_text("keep")
    (outside / "dir/inner").write_text("keep")
    os.chmod(outside / "dir", 0o750)
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    b = Box(tmp_path, dest, outside)
    before = b.snapshot()
    yield b
    assert b.snapshot() == before, "something outside dest changed"


def test_dotdot_escape_rejected(box: Box) -> None:
    for name in ("../../etc/x", "a/../../x", "./../x", "../dest/x"):
        with pytest.raises(UnsafeLayerError, match="climbs out"):
            apply(TarBuilder().file(name, b"pwned").tar(), box.dest)
    assert os.listdir(box.dest) == []


def test_absolute_name_contained(box: Box) -> None:
    apply(TarBuilder().file("/abs/x", b"1").file("/etc/passwd", b"fake").tar(), box.dest)
    assert (box.dest / "abs/x").read_bytes() == b"1"
    assert (box.dest / "etc/passwd").read_bytes() == b"fake"


def test_root_entry_ignored(box: Box) -> None:
    mode = os.lstat(box.dest).st_mode
    layer = TarBuilder().dir("./", mode=0o777, uid=99).file("/", b"x").symlink(".", "/").tar()
    apply(layer, box.dest)
    assert os.lstat(box.dest).st_mode == mode and os.lstat(box.dest).st_uid == 0


@pytest.mark.parametrize("mode", ["overlay", "native"])
def test_write_through_symlinked_dir_contained(box: Box, mode: str) -> None:
    layer = (
        TarBuilder()
        .symlink("evil", str(box.outside))
        .file("evil/pwned", b"x")
        .file("evil/victim", b"overwritten?")
        .dir("evil/dir", mode=0o777, uid=1234)
        .tar()
    )
    apply(layer, box.dest, mode=mode)
    inside = box.dest / str(box.outside).lstrip("/")
    assert (inside / "pwned").read_bytes() == b"x"
    assert (inside / "victim").read_bytes() == b"overwritten?"
    assert os.path.islink(box.dest / "evil")


def test_relative_symlink_up_contained(box: Box) -> None:
    layer = TarBuilder().symlink("evil", "../..").dir("evil/x").file("evil/x/f", b"1").tar()
    apply(layer, box.dest)
    assert (box.dest / "x/f").read_bytes() == b"1"


def test_symlink_chain_contained(box: Box) -> None:
    layer = (
        TarBuilder()
        .symlink("a", "b")
        .symlink("b", "sub/../c")
        .symlink("c", str(box.outside))
        .file("a/f", b"1")
        .tar()
    )
    apply(layer, box.dest)
    assert (box.dest / str(box.outside).lstrip("/") / "f").read_bytes() == b"1"


def test_lower_layer_symlink_in_parent_path_is_replaced_not_followed(box: Box) -> None:
    """A lower layer made bin -> /usr/bin; this layer's `bin/tool` makes bin a dir.

    That is what overlayfs (and so containerd's default snapshotter) shows: the lower
    layer's symlink is never followed for a path in this layer's tar (native mode keeps
    the snapshotters in step; see test_snapshot_parity)."""
    (box.dest / "usr/bin").mkdir(parents=True)
    (box.dest / "bin").symlink_to("/usr/bin")
    apply(TarBuilder().file("bin/tool", b"t").tar(), box.dest, mode="native")
    assert not (box.dest / "bin").is_symlink()
    assert (box.dest / "bin/tool").read_bytes() == b"t"
    assert stat.S_IMODE(os.lstat(box.dest / "bin").st_mode) == 0o755
    assert not (box.dest / "usr/bin/tool").exists()


def test_this_layers_symlink_in_parent_path_is_followed_inside(box: Box) -> None:
    layer = TarBuilder().symlink("bin", "/usr/bin").file("bin/tool", b"t").tar()
    apply(layer, box.dest, mode="native")
    assert os.readlink(box.dest / "bin") == "/usr/bin"
    assert (box.dest / "usr/bin/tool").read_bytes() == b"t"


def test_symlink_loop_rejected(box: Box) -> None:
    layer = TarBuilder().symlink("a", "b").symlink("b", "a").file("a/f", b"1").tar()
    with pytest.raises(LayerFormatError, match="too many levels"):
        apply(layer, box.dest)


def test_parent_is_a_file(box: Box) -> None:
    with pytest.raises(LayerFormatError, match="not a directory"):
        apply(TarBuilder().file("f", b"1").file("f/g", b"2").tar(), box.dest)


def test_hardlink_to_host_file_rejected(box: Box) -> None:
    with pytest.raises(LayerFormatError, match="does not exist"):
        apply(TarBuilder().hardlink("h", "/etc/passwd").tar(), box.dest)
    with pytest.raises(UnsafeLayerError, match="climbs out"):
        apply(TarBuilder().hardlink("h", "../../../outside/victim").tar(), box.dest)
    assert not os.path.lexists(box.dest / "h")


def test_hardlink_absolute_target_stays_inside(box: Box) -> None:
    layer = TarBuilder().file("etc/passwd", b"image").hardlink("h", "/etc/passwd").tar()
    apply(layer, box.dest)
    assert os.lstat(box.dest / "h").st_ino == os.lstat(box.dest / "etc/passwd").st_ino


def test_hardlink_through_symlinked_dir_rejected(box: Box) -> None:
    layer = TarBuilder().symlink("evil", str(box.outside)).hardlink("h", "evil/victim").tar()
    with pytest.raises(UnsafeLayerError, match="symlink"):
        apply(layer, box.dest)
    # ...even when the symlink stays inside dest
    layer = TarBuilder().dir("d").file("d/f", b"").symlink("l", "d").hardlink("h", "l/f").tar()
    with pytest.raises(UnsafeLayerError, match="symlink"):
        apply(layer, box.dest)


@pytest.mark.parametrize("kind", ["file", "dir", "fifo", "symlink", "hardlink"])
@pytest.mark.parametrize("preexisting", [False, True])
def test_entry_over_symlink_pointing_out(box: Box, kind: str, preexisting: bool) -> None:
    """Whatever lands on a symlink replaces it; its target is never written or chmodded."""
    b = TarBuilder()
    if preexisting:  # native mode: a lower layer left the symlink
        os.symlink(box.outside / "victim", box.dest / "link")
        os.symlink(box.outside / "dir", box.dest / "dlink")
    else:
        b.symlink("link", str(box.outside / "victim")).symlink("dlink", str(box.outside / "dir"))
    b.file("src", b"src")
    for name in ("link", "dlink"):
        if kind == "file":
            b.file(name, b"pwned", mode=0o777, uid=1234)
        elif kind == "dir":
            b.dir(name, mode=0o777, uid=1234)
        elif kind == "fifo":
            b.fifo(name, mode=0o777)
        elif kind == "symlink":
            b.symlink(name, "elsewhere")
        else:
            b.hardlink(name, "src")
    apply(b.tar(), box.dest, mode="native")
    for name in ("link", "dlink"):
        assert os.path.islink(box.dest / name) == (kind == "symlink")


def test_native_whiteout_escapes(box: Box) -> None:
    with pytest.raises(UnsafeLayerError):
        apply(TarBuilder().file("../.wh.victim", b"").tar(), box.dest, mode="native")
    layer = (
        TarBuilder()
        .symlink("evil", str(box.outside))
        .whiteout("evil/victim")
        .whiteout("evil/dir")
        .opaque("evil")
        .symlink("up", "../../..")
        .whiteout("up/outside")
        .tar()
    )
    apply(layer, box.dest, mode="native")


@pytest.mark.parametrize("name", [".wh..", ".wh...", "d/.wh..."])
def test_whiteout_of_dot_entries_rejected(box: Box, name: str) -> None:
    (box.dest / "d").mkdir()
    (box.dest / "d/f").write_text("1")
    for mode in ("overlay", "native"):
        with pytest.raises(UnsafeLayerError):
            apply(TarBuilder().file(name, b"").tar(), box.dest, mode=mode)
    assert (box.dest / "d/f").read_text() == "1"


def test_overlay_whiteout_through_symlink_contained(box: Box) -> None:
    layer = TarBuilder().symlink("evil", str(box.outside)).whiteout("evil/victim").tar()
    apply(layer, box.dest, mode="overlay")
    assert is_whiteout(box.dest / str(box.outside).lstrip("/") / "victim")


def test_forged_overlay_xattrs_dropped(box: Box) -> None:
    layer = (
        TarBuilder()
        .dir("d", xattrs={"trusted.overlay.opaque": b"y", "user.overlay.opaque": b"y"})
        .file("f", b"", xattrs={"trusted.overlay.metacopy": b""})
        .tar()
    )
    apply(layer, box.dest)
    assert xattrs(box.dest / "d") == {}
    assert xattrs(box.dest / "f") == {}


# -- decompression bombs and sparse files ----------------------------------------------------

GiB = 1 << 30
MiB = 1 << 20


def blocks(path: Path) -> int:
    """Bytes of disk the file takes."""
    return os.lstat(path).st_blocks * 512


def test_the_default_size_limit_is_generous() -> None:
    assert 64 * GiB == DEFAULT_MAX_LAYER_SIZE


def test_a_bomb_entry_is_refused_before_its_data_is_written(dest: Path) -> None:
    # What a few KiB of gzip can decompress to: one 1 GiB file of zeros.
    stream = ZeroFileStream("bomb", GiB)
    with pytest.raises(LayerTooLargeError) as info:
        apply_layer(stream, str(dest), max_size=64 * MiB)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "'bomb'" in msg and str(64 * MiB) in msg and "max_unpacked_layer_size" in msg
    assert isinstance(info.value, LayerFormatError)  # pull maps it to InvalidArgument
    assert stream.consumed < MiB  # the data was never even read
    assert not (dest / "bomb").exists()


def test_the_limit_counts_the_whole_layer(dest: Path) -> None:
    b = TarBuilder()
    for i in range(4):
        b.file(f"f{i}", bytes(300_000))
    with pytest.raises(LayerTooLargeError, match="'f3'"):
        apply(b.tar(), dest, max_size=1_000_000)
    assert not (dest / "f3").exists()
    apply(b.tar(), dest, max_size=1_200_000)  # exactly at the limit is fine
    apply(b.tar(), dest, max_size=0)  # 0 turns the limit off


def test_a_sparse_entry_claiming_a_huge_size_is_refused_by_default(dest: Path) -> None:
    pax = {"GNU.sparse.map": f"0,1,{1 << 50},1", "GNU.sparse.size": str((1 << 50) + 1)}
    layer = TarBuilder().file("huge", b"xy", pax=pax).tar()
    with pytest.raises(LayerTooLargeError, match="'huge'"):
        apply(layer, dest)
    assert not (dest / "huge").exists()


def test_gnu_sparse_file_of_1_gib_stays_sparse(dest: Path) -> None:
    layer = (
        TarBuilder(fmt=tarfile.GNU_FORMAT)
        .gnu_sparse("s", [(0, b"head"), (GiB // 2, b"mid"), (GiB - 4, b"tail")], GiB)
        .tar()
    )
    stats = apply(layer, dest)
    path = dest / "s"
    assert os.path.getsize(path) == GiB and stats.bytes == GiB
    assert blocks(path) < MiB
    with open(path, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(GiB // 2 - 2)
        assert f.read(7) == b"\0\0mid\0\0"
        f.seek(GiB - 6)
        assert f.read() == b"\0\0tail"


def test_pax_sparse_file_of_1_gib_stays_sparse(dest: Path) -> None:
    # GNU sparse format 0.1: the map in a PAX header, the data blocks stored back to back.
    layer = (
        TarBuilder()
        .file(
            "s",
            b"abcXYZ",
            pax={"GNU.sparse.map": f"4096,3,{GiB - 3},3", "GNU.sparse.size": str(GiB)},
        )
        .file("after", b"ok")
        .tar()
    )
    apply(layer, dest)
    path = dest / "s"
    assert os.path.getsize(path) == GiB and blocks(path) < MiB
    with open(path, "rb") as f:
        assert f.read(4099) == bytes(4096) + b"abc"
        f.seek(GiB - 3)
        assert f.read() == b"XYZ"
    assert (dest / "after").read_bytes() == b"ok"


@pytest.mark.parametrize(
    "sparse_map",
    ["0,4,2,4", "10,4,0,2", "0,2,100,4"],  # overlapping, backwards, past the real size
    ids=["overlap", "backwards", "past-end"],
)
def test_a_corrupt_sparse_map_is_refused(dest: Path, sparse_map: str) -> None:
    pax = {"GNU.sparse.map": sparse_map, "GNU.sparse.size": "50"}
    layer = TarBuilder().file("s", b"abcdef", pax=pax).tar()
    with pytest.raises(LayerFormatError, match="sparse"):
        apply(layer, dest)


def test_runs_of_zeros_in_a_regular_file_become_holes(dest: Path) -> None:
    data = b"start" + bytes(8 * MiB) + b"end" + bytes(4 * MiB)
    apply(TarBuilder().file("z", data).tar(), dest)
    path = dest / "z"
    assert path.read_bytes() == data
    assert blocks(path) < 3 * MiB  # the whole-MiB runs of zeros took no disk


def gnu_sparse_extended(ext_blocks: int) -> bytes:
    """A GNU sparse header announcing extension blocks of its map, and `ext_blocks` of
    them, each announcing one more: a map that never ends before the stream does."""
    info = tarfile.TarInfo("s")
    info.type, info.size, info.mtime = tarfile.GNUTYPE_SPARSE, 0, EPOCH
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[482] = 1  # isextended
    header[483:495] = b"%011o\0" % 100  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    ext = bytearray(tarfile.BLOCKSIZE)
    ext[504] = 1
    return bytes(header) + bytes(ext) * ext_blocks


def pax_sparse_10(data: bytes) -> bytes:
    """A PAX sparse 1.0 entry: its map is the start of its data."""
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "9"}
    return TarBuilder().file("s", data, pax=pax).tar()


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (gnu_sparse_extended(3000), "sparse map .*larger than"),
        (gnu_sparse_extended(2), "sparse map"),
        (pax_sparse_10(b"1000000000\n" + b"0\n" * 600_000), "sparse map .*larger than"),
        (pax_sparse_10(b"2\nx\n1\n"), "sparse map"),
    ],
    ids=["gnu-endless-map", "gnu-truncated-map", "pax-1.0-huge-map", "pax-1.0-garbage-map"],
)
def test_a_hostile_sparse_map_is_a_format_error(dest: Path, layer: bytes, match: str) -> None:
    with pytest.raises(LayerFormatError, match=match):
        apply_layer(OneWayReader(layer), str(dest))  # type: ignore[arg-type]
