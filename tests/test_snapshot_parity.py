"""The overlayfs and native snapshotters build the same filesystem from the same image.

Each image of the corpus is unpacked with both snapshotters through the real code
(prepare_layer, apply_layer, prepare_view, a read-only mount of the chain: overlay for
the overlayfs snapshotter), and the two trees are compared entry by entry: type, mode,
owner, xattrs, link count, symlink target, content. The expected result is what a
Docker/containerd node gives: a non-directory of a lower layer where a layer has a
directory is replaced by the directory (never followed), and a parent dir a layer does
not list keeps the mode and owner of the dir below it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crispy.images.unpack import LayerFormatError, apply_layer
from crispy.snapshots import NativeSnapshotter, OverlaySnapshotter, Snapshotter
from crispy.system import mount as sysmount
from support.hostile import TarBuilder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chown)")

VIEW = 1000  # the snapshot id of the read-only view over the layers

Entry = tuple[object, ...]


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for mp in sysmount.mounts_under(str(tmp_path)):
        with contextlib.suppress(OSError):
            sysmount.umount(mp, sysmount.MNT_DETACH)


def entry(path: str, st: os.stat_result) -> Entry:
    kind = stat.S_IFMT(st.st_mode)
    xattrs = tuple(
        sorted(
            (k, os.getxattr(path, k, follow_symlinks=False))
            for k in os.listxattr(path, follow_symlinks=False)
        )
    )
    base: Entry = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs)
    if stat.S_ISLNK(st.st_mode):
        return (*base, os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return (*base, st.st_nlink, hashlib.sha256(f.read()).hexdigest()[:16])
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return (*base, st.st_rdev)
    return base


def walk(top: Path) -> dict[str, Entry]:
    """Relative path → entry of everything under `top` (the root as ".")."""
    out = {".": entry(str(top), os.lstat(top))}
    stack = [str(top)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    # overlayfs lists a whiteout in a dir with nothing below it (a dir over
                    # a lower symlink, say) but then finds nothing there: not an entry.
                    continue
                out[os.path.relpath(e.path, top)] = entry(e.path, st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return out


def unpack(cls: type[Snapshotter], root: Path, layers: list[bytes], target: Path) -> None:
    """Unpack `layers` as the image service does and mount the chain read-only on target."""
    snap = cls(str(root))
    parents: list[int] = []
    for i, tar in enumerate(layers, start=1):
        dest = snap.prepare_layer(i, list(parents))
        apply_layer(io.BytesIO(tar), dest, mode=snap.layer_mode())  # type: ignore[arg-type]
        parents.append(i)
    snap.prepare_view(VIEW, parents)
    target.mkdir()
    snap.mount(VIEW, parents, str(target), readonly=True)


def both(tmp: Path, layers: list[bytes]) -> tuple[dict[str, Entry], dict[str, Entry]]:
    """(overlay tree, native tree) of the image `layers`."""
    unpack(OverlaySnapshotter, tmp / "ov", layers, tmp / "ov-view")
    unpack(NativeSnapshotter, tmp / "nat", layers, tmp / "nat-view")
    return walk(tmp / "ov-view"), walk(tmp / "nat-view")


D, F, L = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK


def T() -> TarBuilder:
    return TarBuilder()


# name → (layers, {path: (type, mode, uid) or None for "absent"})
CORPUS: dict[str, tuple[list[bytes], dict[str, tuple[int, int, int] | None]]] = {
    "symlink-then-dir": (
        [T().dir("tmp", 0o1777).symlink("d", "/tmp").tar(), T().file("d/f", b"f").tar()],
        {"d": (D, 0o755, 0), "d/f": (F, 0o644, 0), "tmp/f": None},
    ),
    "relative-symlink-to-a-0700-dir-then-dir": (
        [
            T().dir("real", 0o700, uid=1000).symlink("d", "real").tar(),
            T().file("d/f", b"f").tar(),
        ],
        {"d": (D, 0o755, 0), "d/f": (F, 0o644, 0), "real": (D, 0o700, 1000), "real/f": None},
    ),
    "dir-then-file": (
        [T().dir("a").file("a/x", b"x").tar(), T().file("a", b"now a file").tar()],
        {"a": (F, 0o644, 0), "a/x": None},
    ),
    "file-then-dir": (
        [T().file("a", b"a").tar(), T().dir("a", 0o750, uid=7).file("a/y", b"y").tar()],
        {"a": (D, 0o750, 7), "a/y": (F, 0o644, 0)},
    ),
    "file-then-unlisted-dir": (
        [T().file("a", b"a", mode=0o600, uid=5).tar(), T().file("a/y", b"y").tar()],
        {"a": (D, 0o755, 0), "a/y": (F, 0o644, 0)},
    ),
    "whiteout-of-a-symlink": (
        [T().dir("t").file("t/x", b"x").symlink("s", "t").tar(), T().whiteout("s").tar()],
        {"s": None, "t/x": (F, 0o644, 0)},
    ),
    "whiteout-below-a-lower-symlink": (
        [T().dir("t").file("t/x", b"x").symlink("s", "t").tar(), T().whiteout("s/x").tar()],
        {"s": (D, 0o755, 0), "t/x": (F, 0o644, 0)},
    ),
    "opaque-dir-over-a-symlink": (
        [
            T().dir("t").file("t/x", b"x").symlink("s", "t").tar(),
            T().dir("s", 0o711).opaque("s").file("s/y", b"y").tar(),
        ],
        {"s": (D, 0o711, 0), "s/y": (F, 0o644, 0), "s/x": None, "t/x": (F, 0o644, 0)},
    ),
    "unlisted-opaque-dir-over-a-symlink": (
        [
            T().dir("t").file("t/x", b"x").symlink("s", "t").tar(),
            T().opaque("s").file("s/y", b"y").tar(),
        ],
        {"s": (D, 0o755, 0), "s/y": (F, 0o644, 0), "s/x": None, "t/x": (F, 0o644, 0)},
    ),
    "hardlink-across-dirs-under-unlisted-parents": (
        [
            T().dir("a", 0o700, uid=1000, gid=1000).dir("b", 0o750, uid=2).tar(),
            T().file("a/f", b"shared").hardlink("b/h", "a/f").tar(),
        ],
        {"a": (D, 0o700, 1000), "b": (D, 0o750, 2), "b/h": (F, 0o644, 0)},
    ),
    "unlisted-parent-keeps-lower-mode-owner-xattrs": (
        [
            T()
            .dir("a", 0o700, uid=1000, gid=1000, xattrs={"user.k": b"v"})
            .dir("a/b", 0o710, uid=1001, gid=1002)
            .tar(),
            T().file("a/b/f", b"f").tar(),
        ],
        {"a": (D, 0o700, 1000), "a/b": (D, 0o710, 1001), "a/b/f": (F, 0o644, 0)},
    ),
    "unlisted-parent-over-an-unlisted-parent": (
        [
            T().dir("a", 0o700, uid=1000).tar(),
            T().file("a/x", b"x").tar(),
            T().file("a/y", b"y").tar(),
        ],
        {"a": (D, 0o700, 1000), "a/x": (F, 0o644, 0), "a/y": (F, 0o644, 0)},
    ),
    "unlisted-parent-over-a-whiteout": (
        [
            T().dir("a", 0o700, uid=1000).file("a/old", b"o").tar(),
            T().whiteout("a").tar(),
            T().file("a/f", b"f").tar(),
        ],
        {"a": (D, 0o755, 0), "a/old": None, "a/f": (F, 0o644, 0)},
    ),
    "unlisted-parent-over-an-opaque-dir": (
        [
            T().dir("a", 0o700, uid=1000).dir("a/b", 0o700, uid=1000).tar(),
            T().dir("a", 0o750, uid=3).opaque("a").tar(),
            T().file("a/b/f", b"f").tar(),
        ],
        {"a": (D, 0o750, 3), "a/b": (D, 0o755, 0), "a/b/f": (F, 0o644, 0)},
    ),
    "dir-replaced-by-a-symlink": (
        [T().dir("d").file("d/x", b"x").tar(), T().symlink("d", "/etc").tar()],
        {"d": (L, 0o777, 0), "d/x": None},
    ),
    "dir-replaced-by-a-symlink-then-a-dir-again": (
        [
            T().dir("d", 0o700, uid=9).file("d/x", b"x").dir("etc").tar(),
            T().symlink("d", "/etc").tar(),
            T().file("d/f", b"f").tar(),
        ],
        {"d": (D, 0o755, 0), "d/f": (F, 0o644, 0), "d/x": None, "etc/f": None},
    ),
    "nested-whiteouts": (
        [
            T().dir("a").dir("a/b").dir("a/b/c").file("a/b/c/f", b"f").file("a/b/g", b"g").tar(),
            T().whiteout("a/b/c").tar(),
            T().whiteout("a/b").file("a/b2", b"b2").tar(),
            T().file("a/b/new", b"n").tar(),
        ],
        {"a/b": (D, 0o755, 0), "a/b/new": (F, 0o644, 0), "a/b/g": None, "a/b/c": None},
    ),
    "symlink-of-this-layer-is-followed-into-a-lower-dir": (
        [T().dir("data", 0o700, uid=1000).tar(), T().symlink("l", "/data").file("l/f", b"f").tar()],
        {"l": (L, 0o777, 0), "data": (D, 0o700, 1000), "data/f": (F, 0o644, 0)},
    ),
    "symlink-of-this-layer-through-a-lower-symlink": (
        [
            T().dir("real").symlink("l", "/real").tar(),
            T().symlink("s", "/l/x").file("s/f", b"f").tar(),
        ],
        {"l": (D, 0o755, 0), "l/x": (D, 0o755, 0), "l/x/f": (F, 0o644, 0), "real/x": None},
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_overlay_and_native_build_the_same_tree(tmp: Path, name: str) -> None:
    layers, expected = CORPUS[name]
    overlay, native = both(tmp, layers)
    for path, want in expected.items():
        for label, tree in (("overlay", overlay), ("native", native)):
            got = tree.get(path)
            if want is None:
                assert got is None, f"{label}: {path} should not exist, is {got}"
            else:
                assert got is not None, f"{label}: {path} missing"
                assert got[:3] == want, f"{label}: {path} is {got}, want {want}"
    assert set(overlay) == set(native)
    for path in sorted(overlay):
        assert overlay[path] == native[path], path


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter])
def test_a_hardlink_to_a_lower_layers_file_is_refused_by_both(
    tmp: Path, cls: type[Snapshotter]
) -> None:
    # containerd's applier links within the layer being applied only (overlay's upper dir).
    layers = [T().file("f", b"lower").tar(), T().hardlink("h", "f").tar()]
    with pytest.raises(LayerFormatError, match="does not exist"):
        unpack(cls, tmp / "s", layers, tmp / "view")


def test_unlisted_parents_are_right_when_the_upper_layer_unpacks_first(tmp: Path) -> None:
    # A pull unpacks overlay layers side by side: layer 2 may finish before layer 1 has
    # even started. Its unlisted dirs are fixed up once the chain is used.
    snap = OverlaySnapshotter(str(tmp / "ov"))
    l1 = snap.prepare_layer(1, [])
    l2 = snap.prepare_layer(2, [1])
    apply_layer(io.BytesIO(T().file("a/b/f", b"f").tar()), l2)  # type: ignore[arg-type]
    log = tmp / "ov" / "2" / "implicit-dirs"
    assert log.read_bytes() == b"a\0a/b"
    layer1 = T().dir("a", 0o700, uid=1000, xattrs={"user.k": b"v"}).dir("a/b", 0o750, gid=5)
    apply_layer(io.BytesIO(layer1.tar()), l1)  # type: ignore[arg-type]
    assert not (tmp / "ov" / "1" / "implicit-dirs").exists()  # it listed all its dirs
    snap.prepare_view(VIEW, [1, 2])
    assert not log.exists()
    a, b = os.lstat(Path(l2) / "a"), os.lstat(Path(l2) / "a/b")
    assert (stat.S_IMODE(a.st_mode), a.st_uid) == (0o700, 1000)
    assert (stat.S_IMODE(b.st_mode), b.st_gid) == (0o750, 5)
    assert os.getxattr(Path(l2) / "a", "user.k") == b"v"
    # A second view of the same chain finds nothing left to do, and a fresh snapshotter
    # (a restarted daemon) too.
    snap.prepare_view(VIEW + 1, [1, 2])
    OverlaySnapshotter(str(tmp / "ov")).prepare_active(VIEW + 2, [1, 2])
    assert stat.S_IMODE(os.lstat(Path(l2) / "a").st_mode) == 0o700
