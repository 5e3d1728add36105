"""The SQLite state store: WAL, schema versions, forward migrations, atomicity."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from crispy.store import SCHEMA_VERSION, Store, StoreError
from crispy.store.db import AUTO_VACUUM_INCREMENTAL, MIGRATIONS, PodRow


def test_new_store_is_wal_full_sync_at_latest_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "crispy.db")
    assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    conn = sqlite3.connect(tmp_path / "crispy.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_meta_survives_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    assert s.get_meta("pod_cidr") is None
    s.set_meta("pod_cidr", "10.1.0.0/16")
    s.set_meta("pod_cidr", "10.2.0.0/16")
    s.close()
    s = Store(tmp_path / "db")
    assert s.get_meta("pod_cidr") == "10.2.0.0/16"
    s.close()


def test_migrations_run_forward_and_keep_data(tmp_path: Path) -> None:
    m1 = "CREATE TABLE t (x INTEGER);"
    s = Store(tmp_path / "db", migrations=[m1])
    with s.transaction() as c:
        c.execute("INSERT INTO t VALUES (7)")
    s.close()
    m2 = "ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT 'new';"
    s = Store(tmp_path / "db", migrations=[m1, m2])
    assert s.schema_version == 2
    with s.transaction() as c:
        assert c.execute("SELECT x, y FROM t").fetchall() == [(7, "new")]
    s.close()


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    m1 = "CREATE TABLE t (x INTEGER);"
    Store(tmp_path / "db", migrations=[m1]).close()
    broken = "CREATE TABLE u (y INTEGER); INSERT INTO nowhere VALUES (1);"
    with pytest.raises(StoreError, match="schema version 2 failed"):
        Store(tmp_path / "db", migrations=[m1, broken])
    s = Store(tmp_path / "db", migrations=[m1])
    assert s.schema_version == 1
    with s.transaction() as c:
        # the half-applied migration's table was rolled back with it
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert "u" not in names
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "db", migrations=["CREATE TABLE a (x);", "CREATE TABLE b (x);"]).close()
    with pytest.raises(StoreError, match="newer than this crispy understands"):
        Store(tmp_path / "db", migrations=["CREATE TABLE a (x);"])


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    s.set_meta("k", "before")
    with pytest.raises(RuntimeError), s.transaction() as c:
        c.execute("UPDATE meta SET value = 'after' WHERE key = 'k'")
        raise RuntimeError("side effect failed")
    assert s.get_meta("k") == "before"
    s.close()


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="unusable"):
        Store(tmp_path / "db")


def _pod(i: int, size: int) -> PodRow:
    return PodRow(
        id=f"{i:064x}",
        name=f"pod-{i}_ns_uid_0",
        state="ready",
        created_at=i,
        runtime_handler="runc",
        config=os.urandom(size),  # incompressible, as labels and annotations may be
        info={},
    )


def test_removed_rows_give_their_space_back(tmp_path: Path) -> None:
    s = Store(tmp_path / "crispy.db")
    assert s._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL
    for i in range(40):
        s.add_pod(_pod(i, 512 * 1024))
    s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    grown = os.path.getsize(tmp_path / "crispy.db")
    assert grown > 20 * 1024 * 1024
    for i in range(40):
        s.delete_pod(f"{i:064x}")
    files = [tmp_path / "crispy.db", tmp_path / "crispy.db-wal"]
    left = sum(f.stat().st_size for f in files if f.exists())
    assert left < 2 * 1024 * 1024, left
    s.close()


def test_a_database_without_auto_vacuum_is_converted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "crispy.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA auto_vacuum=0")
    conn.executescript("".join(MIGRATIONS) + f"\nPRAGMA user_version = {SCHEMA_VERSION};")
    conn.close()
    s = Store(path)
    s.add_pod(_pod(1, 100))
    s.close()
    s = Store(path)
    assert s._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL
    assert [p.id for p in s.list_pods()] == [f"{1:064x}"]
    s.close()
