"""The image manager: pull, look up, list, remove, garbage-collect, filesystem usage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from crispy import errors
from crispy.config import Config
from crispy.images import reference
from crispy.images.content import ContentStore
from crispy.images.pull import Puller
from crispy.images.registry import Credentials
from crispy.snapshots import Snapshotter
from crispy.store import ImageRow, Store
from crispy.testhook import crash_point

log = logging.getLogger(__name__)

_HEX = re.compile(r"^(sha256:)?[a-f0-9]{4,64}$")
INGEST_EXPIRY = 24 * 3600  # a partial download nobody resumed within a day is dropped


@dataclass
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp: int


def _user(config: dict[str, object]) -> tuple[int | None, str]:
    """An image config's USER as CRI reports it: a numeric uid, or a user name."""
    inner = config.get("config")
    user = str(inner.get("User") or "") if isinstance(inner, dict) else ""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


@dataclass
class Image:
    """What CRI's Image message carries, from an image row."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    uid: int | None
    username: str
    pinned: bool
    row: ImageRow


class ImageService:
    def __init__(self, cfg: Config, store: Store, snapshotter: Snapshotter) -> None:
        self.cfg = cfg
        self.store = store
        self.content = ContentStore(cfg.root)
        self.snapshotter = snapshotter
        self._session: aiohttp.ClientSession | None = None
        self.puller = Puller(
            store,
            self.content,
            snapshotter,
            cfg.registry.hosts_dir,
            self.session,
            cfg.images.max_concurrent_downloads,
        )
        self._sandbox_names = self._names_of(cfg.sandbox_image)
        self._fs_cache: tuple[float, list[FsUsage]] | None = None
        # Called with the seconds each successful pull took (the daemon hands metrics' here).
        self.on_pull: list[Callable[[float], None]] = []

    @staticmethod
    def _names_of(ref: str) -> set[str]:
        try:
            r = reference.parse(ref)
        except errors.InvalidArgument:
            return set()
        return {str(r)} | ({r.repo_tag} if r.repo_tag else set())

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- startup ------------------------------------------------------------------

    def recover(self) -> None:
        """Roll back what a crispyd that died left half done, then collect garbage."""
        dropped = self.store.delete_all_leases()
        if dropped:
            log.info("dropped %d leases of a previous crispyd", dropped)
        self.content.remove_temp_files()
        for row in sorted(self.store.list_snapshots(), key=lambda r: -r.id):
            if row.kind == "preparing":
                log.info("removing half-unpacked layer snapshot %d (%s)", row.id, row.key)
                with contextlib.suppress(Exception):
                    self.store.delete_snapshot(row.id)
                self.snapshotter.remove(row.id)
        self.gc()

    # -- lookups --------------------------------------------------------------------

    def to_image(self, row: ImageRow) -> Image:
        uid, username = _user(row.config)
        return Image(
            id=row.id,
            repo_tags=[n for n in row.names if "@" not in n],
            repo_digests=[n for n in row.names if "@" in n],
            size=row.size,
            uid=uid,
            username=username,
            pinned=bool(self._sandbox_names & set(row.names)),
            row=row,
        )

    def resolve(self, ref: str) -> ImageRow | None:
        """An image by ID, ID prefix, tag or repo digest, as kubelet and crictl name them."""
        ref = ref.strip()
        if not ref:
            raise errors.InvalidArgument("no image given")
        if reference.looks_like_image_id(ref):
            full = ref if ref.startswith("sha256:") else f"sha256:{ref}"
            row = self.store.get_image(full)
            if row is not None:
                return row
        try:
            parsed = reference.parse(ref)
        except errors.InvalidArgument:
            if _HEX.match(ref):
                return self._by_prefix(ref)
            raise
        name = parsed.with_digest(parsed.digest) if parsed.digest else parsed.repo_tag
        row = self.store.image_by_name(name or str(parsed))
        if row is None and _HEX.match(ref):
            return self._by_prefix(ref)
        return row

    def _by_prefix(self, ref: str) -> ImageRow | None:
        prefix = ref if ref.startswith("sha256:") else f"sha256:{ref}"
        rows = self.store.images_by_id_prefix(prefix)
        if len(rows) > 1:
            raise errors.InvalidArgument(f"image ID prefix {ref!r} is ambiguous")
        return rows[0] if rows else None

    def status(self, ref: str) -> Image | None:
        row = self.resolve(ref)
        return None if row is None else self.to_image(row)

    def list_images(self, ref: str = "") -> list[Image]:
        if ref:
            row = self.resolve(ref)
            return [] if row is None else [self.to_image(row)]
        return [self.to_image(r) for r in self.store.list_images()]

    # -- pull and remove ----------------------------------------------------------------

    async def pull(self, ref: str, creds: Credentials | None = None) -> Image:
        parsed = reference.parse(ref)
        started = time.monotonic()
        try:
            row = await self.puller.pull(parsed, creds)
        except BaseException:
            # What the failed pull leaves (a half layer, orphan blobs) is not an image's.
            await asyncio.shield(self.gc_async(keep_ingests=True))
            raise
        seconds = time.monotonic() - started
        log.info("pulled %s as %s in %.2fs", parsed, row.id, seconds)
        for hook in self.on_pull:
            hook(seconds)
        return self.to_image(row)

    async def remove(self, ref: str) -> None:
        """Untag when other tags remain; else remove the image and collect its garbage."""
        row = self.resolve(ref)
        if row is None:
            return
        tags = [n for n in row.names if "@" not in n]
        with contextlib.suppress(errors.InvalidArgument):
            parsed = reference.parse(ref)
            if not parsed.digest and parsed.repo_tag in tags and len(tags) > 1:
                self.store.delete_image_name(parsed.repo_tag)
                return
        self.store.delete_image(row.id)
        crash_point("rmi:image-deleted")
        await self.gc_async()

    # -- rootfs for containers --------------------------------------------------------------

    def prepare_rootfs(self, key: str, image_id: str) -> int:
        """A writable snapshot over an image's layers for a container; returns its id."""
        return self._prepare(key, image_id, self.snapshotter.prepare_active)

    def prepare_view(self, key: str, image_id: str) -> int:
        """A snapshot to mount an image's layers read-only (an image mount); returns its id.

        Recorded as "active", so gc() keeps the layers below it until remove_views(),
        whether or not the image itself is removed meanwhile.
        """
        return self._prepare(key, image_id, self.snapshotter.prepare_view)

    def _prepare(self, key: str, image_id: str, make: Callable[[int, list[int]], None]) -> int:
        row = self.store.get_image(image_id)
        if row is None:
            raise errors.NotFound(f"image {image_id} not found")
        parent = self.store.get_snapshot(row.chain_id) if row.chain_id else None
        if row.chain_id and (parent is None or parent.kind != "committed"):
            raise errors.FailedPrecondition(f"image {image_id} is not unpacked; pull it again")
        snap = self.store.add_snapshot(
            key, parent.id if parent else None, "active", self.snapshotter.name
        )
        try:
            make(snap.id, self.parent_ids(snap.parent))
        except BaseException:
            self.store.delete_snapshot(snap.id)
            raise
        return snap.id

    def parent_ids(self, sid: int | None) -> list[int]:
        """The chain below a snapshot, bottom layer first."""
        chain: list[int] = []
        while sid is not None:
            row = self.store.snapshot_by_id(sid)
            if row is None:
                raise errors.NotFound(f"snapshot {sid} is missing")
            chain.append(row.id)
            sid = row.parent
        return list(reversed(chain))

    def mount_rootfs(self, key: str, target: str, readonly: bool = False) -> None:
        snap = self.store.get_snapshot(key)
        if snap is None:
            raise errors.NotFound(f"snapshot {key} not found")
        self.snapshotter.mount(snap.id, self.parent_ids(snap.parent), target, readonly)

    def remove_rootfs(self, key: str) -> None:
        snap = self.store.get_snapshot(key)
        if snap is None:
            return
        self.store.delete_snapshot(snap.id)
        self.snapshotter.remove(snap.id)
        self.gc()

    def remove_views(self, keys: list[str]) -> None:
        """Drop the view snapshots of image mounts (unmounted first); then collect what
        only they kept. Keys with no snapshot are skipped."""
        snaps = [s for s in map(self.store.get_snapshot, keys) if s is not None]
        for snap in snaps:
            self.store.delete_snapshot(snap.id)
            self.snapshotter.remove(snap.id)
        if snaps:
            self.gc()

    # -- garbage collection -------------------------------------------------------------------

    def gc(self, keep_ingests: bool = False) -> tuple[int, int]:
        """Delete blobs and snapshots nothing references: no image, container or lease."""
        removed_blobs, dead = self._collect(keep_ingests)
        self._remove_dirs(dead)
        return removed_blobs, len(dead)

    async def gc_async(self, keep_ingests: bool = False) -> tuple[int, int]:
        """gc() for the event loop: only the deletion of snapshot dirs goes to a thread."""
        removed_blobs, dead = self._collect(keep_ingests)
        await asyncio.to_thread(self._remove_dirs, dead)
        return removed_blobs, len(dead)

    def _collect(self, keep_ingests: bool) -> tuple[int, list[int]]:
        """Mark and sweep the metadata and the blobs; the snapshot ids whose dirs must go.

        Runs on the event loop without awaiting, so no pull can interleave between
        marking and sweeping; pulls hold their blobs and snapshots in a lease before
        they use them. Snapshot ids are never reused (AUTOINCREMENT), so a dir of a
        deleted row can be removed later, in a thread, without racing a new layer.
        """
        live_blobs = self.store.referenced_blobs()
        removed_blobs = 0
        for digest in list(self.content.list()):
            if digest not in live_blobs:
                self.content.delete(digest)
                crash_point("gc:blob-deleted")
                removed_blobs += 1
        if not keep_ingests:
            for digest in list(self.content.stale_ingests(INGEST_EXPIRY)):
                self.content.discard_ingest(digest)

        rows = self.store.list_snapshots()
        by_id = {r.id: r for r in rows}
        roots = (
            self.store.image_chain_ids()
            | self.store.leased_snapshot_keys()
            | self.puller.in_flight_chain_ids()
        )
        live: set[int] = set()
        for r in rows:
            if r.key in roots or r.kind == "active":
                sid: int | None = r.id
                while sid is not None and sid not in live:
                    live.add(sid)
                    parent = by_id.get(sid)
                    sid = parent.parent if parent else None
        dead = []
        for r in sorted(rows, key=lambda r: -r.id):  # children before parents
            if r.id not in live:
                self.store.delete_snapshot(r.id)
                crash_point("gc:snapshot-row-deleted")
                dead.append(r.id)
        if removed_blobs or dead:
            log.info("gc: removed %d blobs and %d snapshots", removed_blobs, len(dead))
            self._fs_cache = None
        return removed_blobs, dead

    def _remove_dirs(self, sids: list[int]) -> None:
        for sid in sids:
            self.snapshotter.remove(sid)
            crash_point("gc:snapshot-dir-removed")
        self._remove_orphan_dirs()

    def _remove_orphan_dirs(self) -> None:
        """Snapshot dirs with no row: a crash between the row's delete and the dir's."""
        try:
            names = os.listdir(self.snapshotter.root)
        except FileNotFoundError:
            return
        in_flight = {sid for sid, _ in self.puller._layers.values()}
        for name in names:
            if not name.isdigit() or int(name) in in_flight:
                continue
            if self.store.snapshot_by_id(int(name)) is None:
                self.snapshotter.remove(int(name))

    # -- usage --------------------------------------------------------------------------------

    def fs_usage(self) -> list[FsUsage]:
        """Bytes and inodes used by content + snapshots, for kubelet's image GC and eviction."""
        now = time.monotonic()
        if self._fs_cache and now - self._fs_cache[0] < 5:
            return self._fs_cache[1]
        used, inodes = 0, 0
        seen: set[tuple[int, int]] = set()
        for top in (self.content.root, self.snapshotter.root):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    used += st.st_blocks * 512
                    inodes += 1
        result = [FsUsage(self.snapshotter.root, used, inodes, time.time_ns())]
        self._fs_cache = (now, result)
        return result
