"""Snapshotters: layout, real overlay/bind mounts (as root), copies, usage and removal."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crispy.images.unpack import LayerTooLargeError, apply_layer
from crispy.snapshots import (
    LayerDir,
    Mount,
    NativeSnapshotter,
    OverlaySnapshotter,
    Snapshotter,
    base,
    new_snapshotter,
)
from crispy.snapshots.native import copy_tree
from crispy.snapshots.overlay import OPAQUE_XATTR, make_opaque, make_whiteout
from crispy.system import mount as sysmount
from support.hostile import TarBuilder

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with every mount left below it detached on teardown."""
    yield tmp_path
    for mp in sysmount.mounts_under(str(tmp_path)):
        with contextlib.suppress(OSError):
            sysmount.umount(mp, sysmount.MNT_DETACH)


@pytest.fixture
def target(tmp: Path) -> Path:
    t = tmp / "rootfs"
    t.mkdir()
    return t


def fs(snap: Snapshotter, sid: int) -> Path:
    return Path(snap.root) / str(sid) / "fs"


def tree(top: Path) -> dict[str, str]:
    """Relative path → file content (or "<dir>") of everything visible under `top`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), top)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, top)
            out[rel] = "<special>" if not os.path.isfile(p) else Path(p).read_text()
    return out


def three_layers(snap: OverlaySnapshotter) -> None:
    """1: a, keep, gone, dir/{x,y}; 2: whiteout gone, opaque dir/ with z, b; 3: a changed, c."""
    l1 = Path(snap.prepare_layer(1, []))
    (l1 / "a").write_text("a1")
    (l1 / "keep").write_text("keep")
    (l1 / "gone").write_text("gone")
    (l1 / "dir").mkdir()
    (l1 / "dir" / "x").write_text("x")
    (l1 / "dir" / "y").write_text("y")
    l2 = Path(snap.prepare_layer(2, [1]))
    make_whiteout(str(l2 / "gone"))
    (l2 / "dir").mkdir()
    make_opaque(str(l2 / "dir"))
    (l2 / "dir" / "z").write_text("z")
    (l2 / "b").write_text("b")
    l3 = Path(snap.prepare_layer(3, [1, 2]))
    (l3 / "a").write_text("a3")
    (l3 / "c").write_text("c")


MERGED = {"a": "a3", "b": "b", "c": "c", "keep": "keep", "dir": "<dir>", "dir/z": "z"}


# -- overlay --------------------------------------------------------------------------------


@needs_root
def test_overlay_chain_merges_hides_whiteouts_and_opaque_dirs(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    three_layers(snap)
    lowers_before = {sid: tree(fs(snap, sid)) for sid in (1, 2, 3)}
    snap.prepare_active(4, [1, 2, 3])
    assert (Path(snap.root) / "4" / "work").is_dir()
    snap.mount(4, [1, 2, 3], str(target))
    try:
        assert sysmount.is_mountpoint(str(target))
        assert sysmount.fs_type(str(target)) == "overlay"
        assert tree(target) == MERGED
        # Writes land in the upper dir only.
        (target / "new").write_text("new")
        (target / "keep").write_text("changed")
        (target / "b").unlink()
        (target / "dir" / "w").write_text("w")
    finally:
        snap.unmount(str(target))
    assert not sysmount.is_mountpoint(str(target))
    upper = fs(snap, 4)
    assert (upper / "new").read_text() == "new"
    assert (upper / "keep").read_text() == "changed"
    assert stat.S_ISCHR(os.lstat(upper / "b").st_mode)  # overlay's own whiteout
    assert (upper / "dir" / "w").read_text() == "w"
    assert {sid: tree(fs(snap, sid)) for sid in (1, 2, 3)} == lowers_before
    # Mounted again, the container's changes are still there.
    snap.mount(4, [1, 2, 3], str(target))
    try:
        assert tree(target) == {
            **{k: v for k, v in MERGED.items() if k != "b"},
            "new": "new",
            "keep": "changed",
            "dir/w": "w",
        }
    finally:
        snap.unmount(str(target))


@needs_root
def test_overlay_readonly_views_refuse_writes(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    three_layers(snap)
    # Several parents: an overlay with lowerdirs only.
    [m] = snap.mounts(9, [1, 2, 3], readonly=True)
    assert m.type == "overlay"
    assert not any(o.startswith(("upperdir=", "workdir=")) for o in m.options)
    snap.mount(9, [1, 2, 3], str(target), readonly=True)
    try:
        assert tree(target) == MERGED
        with pytest.raises(OSError) as exc:
            (target / "x").write_text("x")
        assert exc.value.errno == errno.EROFS
    finally:
        snap.unmount(str(target))
    # One parent: a read-only bind mount.
    assert snap.mounts(9, [1], readonly=True) == [Mount("bind", str(fs(snap, 1)), ["rbind", "ro"])]
    snap.mount(9, [1], str(target), readonly=True)
    try:
        assert (target / "gone").read_text() == "gone"
        with pytest.raises(OSError) as exc:
            (target / "x").write_text("x")
        assert exc.value.errno == errno.EROFS
    finally:
        snap.unmount(str(target))
    assert not (fs(snap, 1) / "x").exists()


@needs_root
def test_overlay_active_without_parents_is_a_bind_of_its_own_dir(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    snap.prepare_active(1, [])
    snap.mount(1, [], str(target))
    try:
        (target / "f").write_text("f")
    finally:
        snap.unmount(str(target))
    assert (fs(snap, 1) / "f").read_text() == "f"


@needs_root
def test_150_layers_exceed_a_page_of_options_and_still_mount(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    n = 150
    for sid in range(1, n + 1):
        layer = Path(snap.prepare_layer(sid, list(range(1, sid))))
        (layer / f"f{sid}").write_text(str(sid))
    parents = list(range(1, n + 1))
    snap.prepare_active(n + 1, parents)
    [m] = snap.mounts(n + 1, parents)
    assert len(",".join(m.options)) > os.sysconf("SC_PAGE_SIZE")  # the workaround is needed
    snap.mount(n + 1, parents, str(target))
    try:
        names = set(os.listdir(target))
        assert names == {f"f{i}" for i in parents}
        assert all((target / f"f{i}").read_text() == str(i) for i in (1, 75, n))
        (target / "top").write_text("top")
    finally:
        snap.unmount(str(target))
    assert (fs(snap, n + 1) / "top").read_text() == "top"
    snap.mount(n + 1, parents, str(target), readonly=True)
    try:
        assert len(os.listdir(target)) == n
    finally:
        snap.unmount(str(target))


@needs_root
def test_overlay_paths_with_commas_and_colons_are_escaped(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "odd,name:here"))
    for sid in (1, 2):
        (Path(snap.prepare_layer(sid, [])) / f"f{sid}").write_text("x")
    snap.prepare_active(3, [1, 2])
    snap.mount(3, [1, 2], str(target))
    try:
        assert sorted(os.listdir(target)) == ["f1", "f2"]
    finally:
        snap.unmount(str(target))


def test_overlay_mount_options_shape(tmp_path: Path) -> None:
    snap = OverlaySnapshotter(str(tmp_path))
    r = snap.root
    [m] = snap.mounts(7, [1, 2, 3])
    assert (m.type, m.source) == ("overlay", "overlay")
    assert m.options[-3:] == [
        f"workdir={r}/7/work",
        f"upperdir={r}/7/fs",
        f"lowerdir={r}/3/fs:{r}/2/fs:{r}/1/fs",
    ]
    assert not any("userxattr" in o for o in m.options)
    assert snap.mounts(7, []) == [Mount("bind", f"{r}/7/fs", ["rbind", "rw"])]
    assert snap.layer_mode() == "overlay"


# -- the mount logic, with a stand-in for the syscalls ---------------------------------------


class FakeSys:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str = "", *, cwd: str | None = None) -> None:  # fmt: skip
        self.calls.append(("mount", source, target, fstype, flags, data, cwd))

    def umount(self, target: str, flags: int = 0) -> None:
        self.calls.append(("umount", target, flags))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSys:
    f = FakeSys()
    monkeypatch.setattr(base.sysmount, "mount", f.mount)
    monkeypatch.setattr(base.sysmount, "umount", f.umount)
    return f


def test_readonly_bind_is_bind_then_remount(fake: FakeSys) -> None:
    base.mount_all([Mount("bind", "/src", ["rbind", "ro", "nosuid", "rprivate"])], "/t")
    s = sysmount
    assert fake.calls == [
        ("mount", "/src", "/t", None, s.MS_BIND | s.MS_REC, "", None),
        ("mount", None, "/t", None, s.MS_BIND | s.MS_REMOUNT | s.MS_RDONLY | s.MS_NOSUID, "", None),
        ("mount", None, "/t", None, s.MS_PRIVATE | s.MS_REC, "", None),
    ]


def test_long_overlay_options_mount_relative_from_the_root(fake: FakeSys) -> None:
    root = "/var/lib/crispy/snapshots"
    snap = OverlaySnapshotter.__new__(OverlaySnapshotter)
    snap.root = root
    parents = list(range(1000, 1150))
    [m] = snap.mounts(5000, parents)
    base.mount_one(m, "/t")
    [(_, source, tgt, fstype, _flags, data, cwd)] = fake.calls
    assert isinstance(data, str)
    assert (source, tgt, fstype, cwd) == ("overlay", "/t", "overlay", root)
    assert len(data) < os.sysconf("SC_PAGE_SIZE")
    assert "workdir=5000/work,upperdir=5000/fs,lowerdir=1149/fs:1148/fs:" in data
    assert data.endswith(":1000/fs")


def test_short_overlay_options_keep_absolute_paths(fake: FakeSys) -> None:
    base.mount_one(Mount("overlay", "overlay", ["lowerdir=/a/1/fs:/a/2/fs"]), "/t")
    assert fake.calls == [
        ("mount", "overlay", "/t", "overlay", 0, "lowerdir=/a/1/fs:/a/2/fs", None)
    ]


def test_too_many_layers_even_relative_is_a_clear_error(fake: FakeSys) -> None:
    snap = OverlaySnapshotter.__new__(OverlaySnapshotter)
    snap.root = "/r"
    [m] = snap.mounts(1, list(range(100000, 100700)))
    with pytest.raises(OSError) as exc:
        base.mount_one(m, "/t")
    assert exc.value.errno == errno.E2BIG
    assert "/t" in str(exc.value)
    assert fake.calls == []


def test_failed_mount_in_a_stack_undoes_the_earlier_ones(
    fake: FakeSys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def mount(source: str | None, target: str, fstype: str | None, *a: object, **k: object) -> None:
        if fstype == "bad":
            raise OSError(errno.EINVAL, f"mount on {target}")
        fake.calls.append(("mount", source, target, fstype))

    monkeypatch.setattr(base.sysmount, "mount", mount)
    with pytest.raises(OSError):
        base.mount_all([Mount("tmpfs", "tmpfs"), Mount("bad", "x")], "/t")
    assert fake.calls == [("mount", "tmpfs", "/t", "tmpfs"), ("umount", "/t", sysmount.MNT_DETACH)]


def test_unmount_detaches_when_busy_and_stops_when_nothing_is_mounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = [errno.EBUSY, 0, errno.EINVAL]  # busy, then a stacked mount, then nothing
    calls: list[int] = []

    def umount(target: str, flags: int = 0) -> None:
        calls.append(flags)
        if flags & sysmount.MNT_DETACH:
            return
        err = results.pop(0)
        if err:
            raise OSError(err, target)

    monkeypatch.setattr(base.sysmount, "umount", umount)
    base.unmount_all("/t")
    nf, detach = sysmount.UMOUNT_NOFOLLOW, sysmount.MNT_DETACH
    assert calls == [nf, nf | detach, nf, nf]


def test_parse_options() -> None:
    flags, prop, data = base.parse_options(["ro", "rw", "nodev", "rslave", "index=off", "exec"])
    assert flags == sysmount.MS_NODEV
    assert prop == [sysmount.MS_SLAVE | sysmount.MS_REC]
    assert data == ["index=off"]


# -- native ---------------------------------------------------------------------------------


@needs_root
def test_native_copy_keeps_what_a_layer_holds(tmp: Path) -> None:
    snap = NativeSnapshotter(str(tmp / "snapshots"))
    src = Path(snap.prepare_layer(1, []))
    (src / "bin").mkdir()
    su = src / "bin" / "su"
    su.write_bytes(b"\x7fELF" + b"x" * 5000)
    os.chown(su, 0, 0)
    os.chmod(su, 0o4755)
    owned = src / "owned"
    owned.write_text("o")
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o640)
    os.setxattr(owned, "user.note", b"hello")
    os.utime(owned, ns=(1_000_000_000, 1_234_567_891_000))
    os.symlink("bin/su", src / "link")
    os.symlink("/nonexistent", src / "dangling")
    os.lchown(src / "link", 42, 43)
    os.mknod(src / "null", stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)
    os.mkfifo(src / "fifo")
    os.chmod(src / "fifo", 0o620)
    os.link(owned, src / "owned-link")
    (src / "ro").mkdir()
    (src / "ro" / "inside").write_text("i")
    os.chmod(src / "ro", 0o555)
    os.utime(src / "ro", ns=(5, 7_000_000_000))
    make_whiteout(str(src / "wh"))
    deep = src
    for _ in range(300):  # deeper than a recursive copy would like
        deep = deep / "d"
    os.makedirs(deep)

    dst = Path(snap.prepare_layer(2, [1]))
    st = os.lstat(dst / "bin" / "su")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (dst / "bin" / "su").read_bytes() == su.read_bytes()
    st = os.lstat(dst / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    assert st.st_mtime_ns == 1_234_567_891_000
    assert os.getxattr(dst / "owned", "user.note") == b"hello"
    assert st.st_ino != os.lstat(owned).st_ino  # a copy, never linked to the parent
    assert os.readlink(dst / "link") == "bin/su"
    assert os.readlink(dst / "dangling") == "/nonexistent"
    assert os.lstat(dst / "link").st_uid == 42
    st = os.lstat(dst / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dst / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    # Hardlinks may become copies; this copy keeps them linked within itself.
    assert (dst / "owned-link").read_text() == "o"
    assert os.lstat(dst / "owned-link").st_ino == os.lstat(dst / "owned").st_ino
    st = os.lstat(dst / "ro")
    assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime_ns == 7_000_000_000
    assert (dst / "ro" / "inside").read_text() == "i"
    assert os.lstat(dst / "wh").st_rdev == 0
    assert (dst / deep.relative_to(src)).is_dir()
    assert os.lstat(dst).st_mode == os.lstat(src).st_mode
    assert snap.layer_mode() == "native"


def test_copy_tree_keeps_modes_without_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f")
    os.chmod(src / "sub" / "f", 0o751)
    os.symlink("sub/f", src / "l")
    copy_tree(str(src), str(tmp_path / "dst"))
    assert stat.S_IMODE(os.lstat(tmp_path / "dst" / "sub" / "f").st_mode) == 0o751
    assert os.readlink(tmp_path / "dst" / "l") == "sub/f"


@needs_root
def test_native_active_snapshot_mounts_its_copy(tmp: Path, target: Path) -> None:
    snap = NativeSnapshotter(str(tmp / "snapshots"))
    (Path(snap.prepare_layer(1, [])) / "base").write_text("base")
    layer2 = Path(snap.prepare_layer(2, [1]))
    (layer2 / "base").unlink()  # native layers apply whiteouts by deleting
    (layer2 / "two").write_text("two")
    snap.prepare_active(3, [1, 2])
    assert snap.mounts(3, [1, 2]) == [Mount("bind", str(fs(snap, 3)), ["rbind", "rw"])]
    snap.mount(3, [1, 2], str(target))
    try:
        assert tree(target) == {"two": "two"}
        (target / "mine").write_text("mine")
    finally:
        snap.unmount(str(target))
    assert (fs(snap, 3) / "mine").exists() and not (fs(snap, 2) / "mine").exists()
    snap.mount(99, [1, 2], str(target), readonly=True)
    try:
        assert tree(target) == {"two": "two"}
        with pytest.raises(OSError) as exc:
            (target / "x").write_text("x")
        assert exc.value.errno == errno.EROFS
    finally:
        snap.unmount(str(target))


# -- what both drivers share ----------------------------------------------------------------


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_usage_counts_blocks_and_inodes_with_hardlinks_once(
    tmp_path: Path, cls: type[Snapshotter]
) -> None:
    snap = cls(str(tmp_path / "snapshots"))
    layer = Path(snap.prepare_layer(1, []))
    (layer / "d").mkdir()
    (layer / "d" / "big").write_bytes(os.urandom(100_000))
    os.symlink("/" + "x" * 200, layer / "sym")  # not followed
    size, inodes = snap.usage(1)
    assert inodes == 4  # fs, d, big, sym
    expected = sum(os.lstat(p).st_blocks * 512 for p in [layer, layer / "d", layer / "d" / "big"])
    assert size == expected + os.lstat(layer / "sym").st_blocks * 512
    assert size >= 100_000
    os.link(layer / "d" / "big", layer / "hard")
    assert snap.usage(1) == (size, inodes)  # the same inode, counted once


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_remove_is_idempotent_and_gets_through_readonly_dirs(
    tmp_path: Path, cls: type[Snapshotter]
) -> None:
    snap = cls(str(tmp_path / "snapshots"))
    layer = Path(snap.prepare_layer(1, []))
    (layer / "a" / "b").mkdir(parents=True)
    (layer / "a" / "b" / "f").write_text("f")
    os.chmod(layer / "a" / "b", 0o555)
    os.chmod(layer / "a", 0o555)
    if os.geteuid() == 0:
        # chattr +i stops even root; a privileged container can set it.
        done = subprocess.run(["chattr", "+i", str(layer / "a" / "b" / "f")], check=False)
        immutable = done.returncode == 0
    assert snap.exists(1)
    snap.remove(1)
    assert not snap.exists(1)
    assert not (Path(snap.root) / "1").exists()
    snap.remove(1)
    snap.remove(12345)
    if os.geteuid() == 0:
        assert immutable


def test_prepare_replaces_leftovers_and_init_clears_half_built_dirs(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    (root / "5" / "fs").mkdir(parents=True)
    (root / "5" / "fs" / "stale").write_text("s")
    (root / ".tmp-6-abc" / "fs").mkdir(parents=True)
    (root / ".overlay-check-xyz" / "m").mkdir(parents=True)
    snap = OverlaySnapshotter(str(root))
    assert not (root / ".tmp-6-abc").exists()
    assert not (root / ".overlay-check-xyz").exists()
    path = snap.prepare_layer(5, [])
    assert path == str(root / "5" / "fs")
    assert os.listdir(path) == []
    assert sorted(os.listdir(root)) == ["5"]


def test_failed_prepare_leaves_nothing(tmp_path: Path) -> None:
    snap = NativeSnapshotter(str(tmp_path / "snapshots"))
    with pytest.raises(FileNotFoundError):
        snap.prepare_layer(2, [1])  # parent 1 does not exist
    assert os.listdir(snap.root) == []
    assert not snap.exists(2)


@needs_root
@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_unmount_of_what_is_not_mounted_is_a_no_op(tmp: Path, cls: type[Snapshotter]) -> None:
    snap = cls(str(tmp / "snapshots"))
    (tmp / "plain").mkdir()
    snap.unmount(str(tmp / "plain"))
    snap.unmount(str(tmp / "missing"))


@needs_root
def test_unmount_of_a_busy_rootfs_detaches_it(tmp: Path, target: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    three_layers(snap)
    snap.prepare_active(4, [1, 2, 3])
    snap.mount(4, [1, 2, 3], str(target))
    fd = os.open(target / "a", os.O_RDONLY)
    try:
        snap.unmount(str(target))
        assert not sysmount.is_mountpoint(str(target))
        assert os.read(fd, 10) == b"a3"
    finally:
        os.close(fd)


@needs_root
def test_remove_detaches_a_mount_left_inside_instead_of_deleting_through_it(tmp: Path) -> None:
    snap = OverlaySnapshotter(str(tmp / "snapshots"))
    layer = Path(snap.prepare_layer(1, []))
    precious = tmp / "precious"
    precious.mkdir()
    (precious / "keep").write_text("k")
    (layer / "m").mkdir()
    sysmount.mount(str(precious), str(layer / "m"), None, sysmount.MS_BIND)
    snap.remove(1)
    assert (precious / "keep").read_text() == "k"
    assert not snap.exists(1)


@needs_root
def test_new_snapshotter(tmp: Path) -> None:
    auto = new_snapshotter("auto", str(tmp / "a"))
    assert isinstance(auto, OverlaySnapshotter) and auto.name == "overlayfs"
    assert os.listdir(tmp / "a") == []
    assert isinstance(new_snapshotter("native", str(tmp / "n")), NativeSnapshotter)
    assert new_snapshotter("overlayfs", str(tmp / "o")).name == "overlayfs"
    with pytest.raises(ValueError, match="unknown snapshotter 'zfs'"):
        new_snapshotter("zfs", str(tmp / "z"))


@pytest.mark.parametrize("name", ["overlayfs", "native"])
def test_prepare_layer_hands_the_unpacker_the_size_limit(tmp: Path, name: str) -> None:
    default = new_snapshotter(name, str(tmp / "d")).prepare_layer(1, [])
    assert isinstance(default, LayerDir) and default.max_size == 64 << 30
    snap = new_snapshotter(name, str(tmp / "s"), max_layer_size=1000)
    dest = snap.prepare_layer(1, [])
    assert dest == str(fs(snap, 1)) and dest.max_size == 1000
    assert (dest.implicit_log is not None) == (name == "overlayfs")
    layer = TarBuilder().file("a", bytes(600)).file("b", bytes(600)).tar()
    with pytest.raises(LayerTooLargeError, match="'b'"):
        apply_layer(io.BytesIO(layer), dest, mode=snap.layer_mode())  # type: ignore[arg-type]


@needs_root
def test_auto_falls_back_to_native_where_overlay_fails(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysmount, "overlay_supported", lambda where=None: False)
    assert isinstance(new_snapshotter("auto", str(tmp / "a")), NativeSnapshotter)


def test_whiteout_helpers_write_what_overlay_reads(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod and trusted.* xattrs need root")
    make_whiteout(str(tmp_path / "w"))
    st = os.lstat(tmp_path / "w")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    (tmp_path / "d").mkdir()
    make_opaque(str(tmp_path / "d"))
    assert os.getxattr(tmp_path / "d", OPAQUE_XATTR) == b"y"
