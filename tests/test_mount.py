"""crispy.system.mount: the libc bindings, mountinfo parsing, and overlay detection."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crispy.system import mount as m

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with every mount left below it detached on teardown."""
    yield tmp_path
    for mp in m.mounts_under(str(tmp_path)):
        with contextlib.suppress(OSError):
            m.umount(mp, m.MNT_DETACH)


MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:33 / /mnt/with\\040space rw,nosuid shared:5 master:2 - tmpfs my\\040tmp rw,size=64k\n"
    "41 40 0:34 /sub /mnt/with\\040space/tab\\011and\\134slash rw - overlay overlay rw\n"
)


def test_mountinfo_parsing_decodes_octal_escapes(tmp_path: Path) -> None:
    p = tmp_path / "mountinfo"
    p.write_text(MOUNTINFO)
    infos = m.read_mountinfo(str(p))
    assert [i.mountpoint for i in infos] == [
        "/",
        "/mnt/with space",
        "/mnt/with space/tab\tand\\slash",
    ]
    second = infos[1]
    assert (second.mount_id, second.parent_id, second.major, second.minor) == (40, 22, 0, 33)
    assert (second.fstype, second.source, second.super_options) == (
        "tmpfs",
        "my tmp",
        "rw,size=64k",
    )
    assert second.options == "rw,nosuid"
    assert infos[2].root == "/sub"
    assert infos[2].fstype == "overlay"


def test_mounts_under_and_fs_type_from_a_fake_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "mountinfo"
    p.write_text(MOUNTINFO)
    monkeypatch.setattr(m, "MOUNTINFO", str(p))
    monkeypatch.setattr(m.os.path, "realpath", lambda x: x)
    assert m.mounts_under("/mnt/with space") == [
        "/mnt/with space/tab\tand\\slash",
        "/mnt/with space",
    ]
    assert m.mounts_under("/mnt/with") == []  # a prefix of a name is not a parent dir
    assert m.is_mountpoint("/mnt/with space")
    assert not m.is_mountpoint("/mnt")
    assert m.fs_type("/mnt/with space/x/y") == "tmpfs"
    assert m.fs_type("/mnt/with space/tab\tand\\slash") == "overlay"
    assert m.fs_type("/etc") == "ext4"


@needs_root
def test_is_mountpoint_with_a_space_in_the_path(tmp: Path) -> None:
    target = tmp / "dir with space"
    target.mkdir()
    assert not m.is_mountpoint(str(target))
    m.mount("tmpfs", str(target), "tmpfs", m.MS_NOSUID, "size=1m")
    try:
        assert m.is_mountpoint(str(target))
        assert m.mounts_under(str(tmp)) == [str(target)]
        assert m.fs_type(str(target / "anything")) == "tmpfs"
    finally:
        m.umount(str(target))
    assert not m.is_mountpoint(str(target))


@needs_root
def test_bind_mount_is_a_mountpoint_though_on_the_same_device(tmp: Path) -> None:
    (tmp / "src").mkdir()
    (tmp / "dst").mkdir()
    m.mount(str(tmp / "src"), str(tmp / "dst"), None, m.MS_BIND)
    try:
        assert m.is_mountpoint(str(tmp / "dst"))
        assert not os.path.ismount(tmp / "dst")  # why mountinfo is read instead
    finally:
        m.umount(str(tmp / "dst"))


@needs_root
def test_errors_carry_errno_and_name_the_target(tmp: Path) -> None:
    missing = tmp / "no such dir"
    with pytest.raises(OSError) as exc:
        m.mount("tmpfs", str(missing), "tmpfs")
    assert exc.value.errno == errno.ENOENT
    assert str(missing) in str(exc.value)

    not_mounted = tmp / "plain"
    not_mounted.mkdir()
    with pytest.raises(OSError) as exc:
        m.umount(str(not_mounted))
    assert exc.value.errno == errno.EINVAL
    assert str(not_mounted) in str(exc.value)

    with pytest.raises(OSError) as exc:
        m.mount("x", str(not_mounted), "no-such-fs-type")
    assert exc.value.errno == errno.ENODEV
    assert str(not_mounted) in str(exc.value)


@needs_root
def test_mount_from_a_child_with_a_working_dir_resolves_relative_paths(tmp: Path) -> None:
    (tmp / "src").mkdir()
    (tmp / "src" / "hello").write_text("hi")
    (tmp / "dst").mkdir()
    cwd = os.getcwd()
    m.mount("src", str(tmp / "dst"), None, m.MS_BIND, cwd=str(tmp))
    try:
        assert (tmp / "dst" / "hello").read_text() == "hi"
        assert os.getcwd() == cwd  # our own working dir never moved
    finally:
        m.umount(str(tmp / "dst"))
    with pytest.raises(OSError) as exc:
        m.mount("nope", str(tmp / "dst"), None, m.MS_BIND, cwd=str(tmp))
    assert exc.value.errno == errno.ENOENT
    assert str(tmp / "dst") in str(exc.value)
    with pytest.raises(OSError) as exc:
        m.mount("src", str(tmp / "dst"), None, m.MS_BIND, cwd=str(tmp / "missing"))
    assert exc.value.errno == errno.ENOENT


@needs_root
def test_umount_detach_of_a_busy_mount(tmp: Path) -> None:
    target = tmp / "t"
    target.mkdir()
    m.mount("tmpfs", str(target), "tmpfs")
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        m.umount(str(target), m.MNT_DETACH)
        assert not m.is_mountpoint(str(target))
    finally:
        os.close(fd)


@needs_root
def test_overlay_supported(tmp: Path) -> None:
    assert m.overlay_supported()
    assert m.overlay_supported(str(tmp))
    assert os.listdir(tmp) == []  # the probe cleans up after itself
    assert not m.overlay_supported(str(tmp / "missing"))
    ro = tmp / "ro"
    ro.mkdir()
    m.mount("tmpfs", str(ro), "tmpfs", m.MS_RDONLY)
    assert not m.overlay_supported(str(ro))
    m.umount(str(ro))


def test_overlay_probe_needs_a_real_mount_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str | None, str, str | None]] = []

    def fail(source: str | None, target: str, fstype: str | None, *a: object, **k: object) -> None:
        calls.append((source, target, fstype))
        raise OSError(errno.EINVAL, "no")

    monkeypatch.setattr(m, "mount", fail)
    assert not m.overlay_supported(str(tmp_path))
    if os.geteuid() == 0:  # else the trusted.* xattr already fails
        assert calls and calls[0][2] == "overlay"
    assert os.listdir(tmp_path) == []
