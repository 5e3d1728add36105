"""crispy.system.atomic: the one atomic file write (pod files, bundles, CNI cache, image
export, the shim's exit records)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from crispy.system import atomic
from crispy.system.atomic import atomic_file, write_atomic


def test_writes_bytes_and_text_with_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(str(tmp_path / "b"), b"\x00bytes")
        write_atomic(str(tmp_path / "t"), "tëxt", mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "b").read_bytes() == b"\x00bytes"
    assert (tmp_path / "t").read_text() == "tëxt"
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "t"]


def test_replaces_the_file_and_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(str(target), "new")
    assert target.read_text() == "new"
    assert synced == ["file", "dir"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "no" / "f"), "x")
    assert not (tmp_path / "no").exists()


def test_concurrent_writers_each_use_their_own_temp_file(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for _ in range(50):
                write_atomic(target, f"{n}" * 1000)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = Path(target).read_text()
    assert len(text) == 1000 and len(set(text)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_leftover_temp_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = iter([b"\x01" * 6, b"\x01" * 6, b"\x02" * 6])
    monkeypatch.setattr(atomic.os, "urandom", lambda n: next(names))
    (tmp_path / f".f.{'01' * 6}.tmp").write_text("left by a crash")
    write_atomic(str(tmp_path / "f"), "x")
    assert (tmp_path / "f").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".f.{'01' * 6}.tmp", "f"]
