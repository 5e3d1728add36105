"""The SQLite state store: every SQL statement crispy runs lives in this module.

WAL journal with synchronous=FULL, so a committed change survives power loss.
Incremental auto-vacuum: the pages that removed pods, containers and images free are
given back to the filesystem after the removal (a database once grown by large configs
would otherwise keep its size for good); a database made before is converted at open.
The schema version is SQLite's `user_version`; MIGRATIONS[i] takes the schema
from version i to i+1 inside one transaction, so a crash mid-migration leaves the
previous version intact. A database written by a newer crispy is refused rather
than guessed at.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


AUTO_VACUUM_INCREMENTAL = 2
RECLAIM_PAGES = 256  # free pages (1 MiB at SQLite's 4 KiB pages) worth giving back


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
    # 2: images, their names and blobs; snapshots; leases that protect in-flight work.
    """
    CREATE TABLE images (
        id                  TEXT PRIMARY KEY,       -- config digest
        manifest_digest     TEXT NOT NULL,
        manifest_media_type TEXT NOT NULL,
        size                INTEGER NOT NULL,       -- compressed layers + config
        config              TEXT NOT NULL,          -- the image config JSON
        layers              TEXT NOT NULL,          -- JSON: [{digest, size, mediaType, diffID}]
        chain_id            TEXT NOT NULL,          -- top layer's chain ID, '' for no layers
        created_at          INTEGER NOT NULL        -- ns since the epoch
    ) STRICT;
    CREATE TABLE image_names (
        name          TEXT PRIMARY KEY,             -- repo:tag or repo@digest
        image_id      TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        target_digest TEXT NOT NULL,                -- what the name resolved to (index/manifest)
        updated_at    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX image_names_by_image ON image_names (image_id);
    CREATE TABLE image_blobs (
        image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        digest   TEXT NOT NULL,
        PRIMARY KEY (image_id, digest)
    ) STRICT;
    CREATE TABLE snapshots (
        -- never reused, so a deleted snapshot's dir can't be mistaken for a new one's
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        key         TEXT NOT NULL UNIQUE,           -- chain ID, or an owner key for rootfs
        parent      INTEGER REFERENCES snapshots (id),
        kind        TEXT NOT NULL CHECK (kind IN ('preparing', 'committed', 'active')),
        snapshotter TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE leases (
        id         TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE lease_resources (
        lease_id TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
        kind     TEXT NOT NULL CHECK (kind IN ('blob', 'snapshot')),
        key      TEXT NOT NULL,
        PRIMARY KEY (lease_id, kind, key)
    ) STRICT;
    """,
    # 3: pod sandboxes. The CRI config is kept as sent (protobuf bytes); `info` holds what
    # crispy made for the pod (namespace files, IPs, shim, cgroup) as JSON.
    """
    CREATE TABLE pods (
        id              TEXT PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,       -- reserved: name_namespace_uid_attempt
        state           TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'notready')),
        created_at      INTEGER NOT NULL,           -- ns since the epoch
        runtime_handler TEXT NOT NULL,
        config          BLOB NOT NULL,
        info            TEXT NOT NULL
    ) STRICT;
    """,
    # 4: containers. Like pods: the CRI config as sent, and `info` for what crispy made.
    """
    CREATE TABLE containers (
        id          TEXT PRIMARY KEY,
        pod_id      TEXT NOT NULL REFERENCES pods (id) ON DELETE CASCADE,
        name        TEXT NOT NULL,                  -- reserved in the pod: <name>_<attempt>
        state       TEXT NOT NULL
                    CHECK (state IN ('creating', 'created', 'running', 'exited')),
        created_at  INTEGER NOT NULL,               -- ns since the epoch
        started_at  INTEGER NOT NULL DEFAULT 0,
        finished_at INTEGER NOT NULL DEFAULT 0,
        exit_code   INTEGER NOT NULL DEFAULT 0,
        reason      TEXT NOT NULL DEFAULT '',
        message     TEXT NOT NULL DEFAULT '',
        image_ref   TEXT NOT NULL,                  -- the image ID it was created from
        config      BLOB NOT NULL,
        info        TEXT NOT NULL,
        UNIQUE (pod_id, name)
    ) STRICT;
    CREATE INDEX containers_by_pod ON containers (pod_id);
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
            self._incremental_vacuum()
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

    # -- space -------------------------------------------------------------

    def _incremental_vacuum(self) -> None:
        """auto_vacuum=INCREMENTAL; an existing database needs one VACUUM to take it (a
        new one takes it before its first table)."""
        if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL:
            return
        self._conn.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            log.info("converting %s to incremental auto-vacuum", self.path)
            self._conn.execute("VACUUM")

    def _reclaim(self) -> None:
        """After a removal: give free pages back once there are enough to matter, and
        checkpoint, so the file (not only its WAL) shrinks."""
        with self._lock:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free < RECLAIM_PAGES:
                return
            # Each step of the pragma frees one page and execute() steps it once (it
            # returns no row to fetch): executescript runs it to the end.
            self._conn.executescript("PRAGMA incremental_vacuum;")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

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

    # -- images -------------------------------------------------------------

    def _image(self, row: tuple[Any, ...]) -> ImageRow:
        image_id = row[0]
        names = [
            r[0]
            for r in self._conn.execute(
                "SELECT name FROM image_names WHERE image_id = ? ORDER BY name", (image_id,)
            )
        ]
        return ImageRow(
            id=image_id,
            manifest_digest=row[1],
            manifest_media_type=row[2],
            size=row[3],
            config=json.loads(row[4]),
            layers=json.loads(row[5]),
            chain_id=row[6],
            created_at=row[7],
            names=names,
        )

    _IMAGE_COLS = (
        "id, manifest_digest, manifest_media_type, size, config, layers, chain_id, created_at"
    )

    def get_image(self, image_id: str) -> ImageRow | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._IMAGE_COLS} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
            return None if row is None else self._image(row)

    def image_by_name(self, name: str) -> ImageRow | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._IMAGE_COLS.replace('id,', 'images.id,', 1)} FROM images "
                "JOIN image_names ON image_names.image_id = images.id WHERE image_names.name = ?",
                (name,),
            ).fetchone()
            return None if row is None else self._image(row)

    def images_by_id_prefix(self, prefix: str) -> list[ImageRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._IMAGE_COLS} FROM images WHERE id >= ? AND id < ?",
                (prefix, prefix + "\uffff"),
            ).fetchall()
            return [self._image(r) for r in rows]

    def list_images(self) -> list[ImageRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._IMAGE_COLS} FROM images ORDER BY created_at, id"
            ).fetchall()
            return [self._image(r) for r in rows]

    def put_image(
        self, image: ImageRow, names: Iterable[tuple[str, str]], blobs: Iterable[str]
    ) -> None:
        """Insert or refresh an image and point `names` (name, target digest) at it.

        A name that pointed at another image moves here in the same transaction,
        so a re-tag never leaves the name missing or doubled.
        """
        now = time.time_ns()
        with self.transaction() as c:
            c.execute(
                "INSERT INTO images (id, manifest_digest, manifest_media_type, size, config, "
                "layers, chain_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    image.id,
                    image.manifest_digest,
                    image.manifest_media_type,
                    image.size,
                    json.dumps(image.config, sort_keys=True),
                    json.dumps(image.layers),
                    image.chain_id,
                    image.created_at or now,
                ),
            )
            c.executemany(
                "INSERT INTO image_blobs (image_id, digest) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(image.id, d) for d in blobs],
            )
            c.executemany(
                "INSERT INTO image_names (name, image_id, target_digest, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "image_id = excluded.image_id, target_digest = excluded.target_digest, "
                "updated_at = excluded.updated_at",
                [(n, image.id, t, now) for n, t in names],
            )

    def name_target(self, name: str) -> tuple[str, str] | None:
        """(image id, target digest) a name points at."""
        with self._lock:
            row = self._conn.execute(
                "SELECT image_id, target_digest FROM image_names WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def delete_image_name(self, name: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM image_names WHERE name = ?", (name,))

    def delete_image(self, image_id: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM images WHERE id = ?", (image_id,))
        self._reclaim()

    def referenced_blobs(self) -> set[str]:
        """Blobs something needs: an image, or an operation holding a lease."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest FROM image_blobs UNION "
                "SELECT key FROM lease_resources WHERE kind = 'blob'"
            ).fetchall()
        return {r[0] for r in rows}

    # -- snapshots ----------------------------------------------------------

    _SNAP_COLS = "id, key, parent, kind, snapshotter, created_at"

    def get_snapshot(self, key: str) -> SnapshotRow | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._SNAP_COLS} FROM snapshots WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else SnapshotRow(*row)

    def snapshot_by_id(self, sid: int) -> SnapshotRow | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._SNAP_COLS} FROM snapshots WHERE id = ?", (sid,)
            ).fetchone()
        return None if row is None else SnapshotRow(*row)

    def list_snapshots(self) -> list[SnapshotRow]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {self._SNAP_COLS} FROM snapshots").fetchall()
        return [SnapshotRow(*r) for r in rows]

    def add_snapshot(
        self, key: str, parent: int | None, kind: str, snapshotter: str, lease: str | None = None
    ) -> SnapshotRow:
        """Create a snapshot row (and hold it in `lease`); a key already in use is an error."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO snapshots (key, parent, kind, snapshotter, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, parent, kind, snapshotter, time.time_ns()),
            )
            if lease is not None:
                c.execute(
                    "INSERT INTO lease_resources (lease_id, kind, key) VALUES (?, 'snapshot', ?) "
                    "ON CONFLICT DO NOTHING",
                    (lease, key),
                )
            sid = cur.lastrowid
        row = self.snapshot_by_id(int(sid or 0))
        assert row is not None
        return row

    def set_snapshot_kind(self, sid: int, kind: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE snapshots SET kind = ? WHERE id = ?", (kind, sid))

    def delete_snapshot(self, sid: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM snapshots WHERE id = ?", (sid,))

    def leased_snapshot_keys(self) -> set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT key FROM lease_resources WHERE kind = 'snapshot'"
            ).fetchall()
        return {r[0] for r in rows}

    def image_chain_ids(self) -> set[str]:
        with self._lock:
            rows = self._conn.execute("SELECT chain_id FROM images WHERE chain_id != ''")
            return {r[0] for r in rows}

    # -- leases -------------------------------------------------------------

    def create_lease(self) -> str:
        lease = uuid.uuid4().hex
        with self.transaction() as c:
            c.execute("INSERT INTO leases (id, created_at) VALUES (?, ?)", (lease, time.time_ns()))
        return lease

    def lease_add(self, lease: str, kind: str, key: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO lease_resources (lease_id, kind, key) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (lease, kind, key),
            )

    def delete_lease(self, lease: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def delete_all_leases(self) -> int:
        """At start: every lease belonged to an operation of a crispyd that has exited."""
        with self.transaction() as c:
            return c.execute("DELETE FROM leases").rowcount

    # -- pods ---------------------------------------------------------------

    _POD_COLUMNS = "id, name, state, created_at, runtime_handler, config, info"

    @staticmethod
    def _pod(row: tuple[Any, ...]) -> PodRow:
        return PodRow(
            id=row[0],
            name=row[1],
            state=row[2],
            created_at=row[3],
            runtime_handler=row[4],
            config=bytes(row[5]),
            info=json.loads(row[6]),
        )

    def list_pods(self) -> list[PodRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._POD_COLUMNS} FROM pods ORDER BY created_at"
            ).fetchall()
        return [self._pod(r) for r in rows]

    def get_pod(self, pod_id: str) -> PodRow | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._POD_COLUMNS} FROM pods WHERE id = ?", (pod_id,)
            ).fetchone()
        return None if row is None else self._pod(row)

    def add_pod(self, pod: PodRow) -> None:
        """Insert a new pod; sqlite3.IntegrityError when its id or name is taken."""
        with self.transaction() as c:
            c.execute(
                f"INSERT INTO pods ({self._POD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    pod.id,
                    pod.name,
                    pod.state,
                    pod.created_at,
                    pod.runtime_handler,
                    pod.config,
                    json.dumps(pod.info),
                ),
            )

    def update_pod(self, pod_id: str, state: str, info: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE pods SET state = ?, info = ? WHERE id = ?",
                (state, json.dumps(info), pod_id),
            )

    def delete_pod(self, pod_id: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM pods WHERE id = ?", (pod_id,))
        self._reclaim()

    # -- containers ---------------------------------------------------------------

    _CTR_COLUMNS = (
        "id, pod_id, name, state, created_at, started_at, finished_at, exit_code, reason, "
        "message, image_ref, config, info"
    )

    @staticmethod
    def _container(row: tuple[Any, ...]) -> ContainerRow:
        names = [f.name for f in dataclasses.fields(ContainerRow)]
        values = dict(zip(names, row, strict=True))
        values["config"] = bytes(row[11])
        values["info"] = json.loads(row[12])
        return ContainerRow(**values)

    def list_containers(self) -> list[ContainerRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._CTR_COLUMNS} FROM containers ORDER BY created_at"
            ).fetchall()
        return [self._container(r) for r in rows]

    def add_container(self, c: ContainerRow) -> None:
        """Insert a new container; sqlite3.IntegrityError when its name is taken in the pod."""
        values = (
            c.id,
            c.pod_id,
            c.name,
            c.state,
            c.created_at,
            c.started_at,
            c.finished_at,
            c.exit_code,
            c.reason,
            c.message,
            c.image_ref,
            c.config,
            json.dumps(c.info),
        )
        with self.transaction() as conn:
            conn.execute(
                f"INSERT INTO containers ({self._CTR_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def update_container(self, c: ContainerRow) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE containers SET state = ?, started_at = ?, finished_at = ?, "
                "exit_code = ?, reason = ?, message = ?, info = ? WHERE id = ?",
                (
                    c.state,
                    c.started_at,
                    c.finished_at,
                    c.exit_code,
                    c.reason,
                    c.message,
                    json.dumps(c.info),
                    c.id,
                ),
            )

    def delete_container(self, container_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))
        self._reclaim()


@dataclass
class ImageRow:
    id: str
    manifest_digest: str
    manifest_media_type: str
    size: int
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    chain_id: str
    created_at: int = 0
    names: list[str] = field(default_factory=list)


@dataclass
class SnapshotRow:
    id: int
    key: str
    parent: int | None
    kind: str
    snapshotter: str
    created_at: int


@dataclass
class PodRow:
    id: str
    name: str
    state: str
    created_at: int
    runtime_handler: str
    config: bytes
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContainerRow:
    id: str
    pod_id: str
    name: str
    state: str
    created_at: int
    started_at: int
    finished_at: int
    exit_code: int
    reason: str
    message: str
    image_ref: str
    config: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)
