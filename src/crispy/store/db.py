"""The SQLite state store: every SQL statement crispy runs lives in this module.

WAL journal with synchronous=FULL, so a committed change survives power loss.
The schema version is SQLite's `user_version`; MIGRATIONS[i] takes the schema
from version i to i+1 inside one transaction, so a crash mid-migration leaves the
previous version intact. A database written by a newer crispy is refused rather
than guessed at.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The state database can't be opened or migrated."""


# Append only: never edit a migration that has shipped.
MIGRATIONS: list[str] = [
    # 1: daemon-wide key/value settings (pod CIDR, last crispy version to open the db).
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """One connection, serialised by a lock: crispyd is one process and SQLite
    writes are short, so a single writer keeps ordering simple and safe."""

    def __init__(self, path: str | os.PathLike[str], migrations: list[str] | None = None) -> None:
        self.path = str(path)
        self._migrations = MIGRATIONS if migrations is None else migrations
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open state database {self.path}: {e}") from e
        self._lock = threading.RLock()
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"state database {self.path} is unusable: {e}") from e
        except StoreError:
            self._conn.close()
            raise

    # -- schema -------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        target = len(self._migrations)
        if current > target:
            raise StoreError(
                f"state database {self.path} has schema version {current}, newer than "
                f"this crispy understands ({target}); run a newer crispy or move the "
                "database aside"
            )
        for version in range(current, target):
            log.info("migrating state database to schema version %d", version + 1)
            try:
                # executescript commits any open transaction first; the explicit
                # BEGIN/COMMIT makes the migration and its version bump atomic.
                self._conn.executescript(
                    "BEGIN IMMEDIATE;\n"
                    + self._migrations[version]
                    + f"\nPRAGMA user_version = {version + 1};\nCOMMIT;"
                )
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(
                    f"migration of {self.path} to schema version {version + 1} failed: {e}"
                ) from e

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- meta ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
