"""Pulling an image: resolve, fetch manifests and config, download and unpack layers.

Layers stream from the registry straight into the unpacker (see layerstream),
up to `max_concurrent_downloads` at a time; a layer whose snapshot exists is not
fetched; a layer that another pull is fetching is joined, not fetched twice. A
download broken mid-body resumes with a Range request; a pull cancelled halfway
leaves its partial blobs for the next pull to resume. A partial blob that is in
fact complete (stopped between the last byte and the commit) is verified and
committed from disk, or discarded, without asking the registry. A registry that
refuses a Range (416, a 200 with the whole body, a 206 from another offset) gets
a full download instead; one whose blob length contradicts the manifest is an
InvalidArgument naming the layer and both sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from gzip import BadGzipFile
from typing import BinaryIO, Literal, cast

import aiohttp
import zstandard
from isal.isal_zlib import error as IsalError

from crispy import errors
from crispy.images import manifest as mf
from crispy.images.content import ContentStore, DigestMismatch, Ingest, SizeMismatch
from crispy.images.hosts import load_hosts
from crispy.images.layerstream import (
    ChunkPipe,
    CompressedSource,
    HashingReader,
    PipeClosed,
    decompressor,
)
from crispy.images.reference import Reference
from crispy.images.registry import Credentials, RegistryClient, RegistryError, TokenCache
from crispy.images.singleflight import SharedTask
from crispy.images.unpack import apply_layer
from crispy.snapshots import Snapshotter
from crispy.store import ImageRow, Store
from crispy.testhook import crash_point

log = logging.getLogger(__name__)

BODY_RETRIES = 5
LayerMode = Literal["overlay", "native"]
# What a corrupt compressed stream or a broken or hostile tar raises while unpacking.
CORRUPT_LAYER = (ValueError, EOFError, BadGzipFile, zstandard.ZstdError, IsalError)
BACKOFF = 0.2


@dataclass
class LayerProgress:
    digest: str
    size: int
    done: int = 0
    state: str = "waiting"  # waiting, downloading, unpacking, exists, done


@dataclass
class PullProgress:
    reference: str
    started: float = field(default_factory=time.monotonic)
    layers: dict[str, LayerProgress] = field(default_factory=dict)


class Puller:
    def __init__(
        self,
        store: Store,
        content: ContentStore,
        snapshotter: Snapshotter,
        hosts_dir: str,
        session: Callable[[], aiohttp.ClientSession],
        max_concurrent_downloads: int = 3,
    ) -> None:
        self.store = store
        self.content = content
        self.snapshotter = snapshotter
        self.hosts_dir = hosts_dir
        self._session = session
        self._sem = asyncio.Semaphore(max_concurrent_downloads)
        self._layers: dict[str, tuple[int, SharedTask[None]]] = {}  # chain ID -> (sid, task)
        self.tokens = TokenCache()
        self.progress: dict[int, PullProgress] = {}
        self.bytes_downloaded = 0  # for metrics and tests

    def in_flight_chain_ids(self) -> set[str]:
        return set(self._layers)

    def client(self, ref: Reference, creds: Credentials | None) -> RegistryClient:
        return RegistryClient(
            self._session(),
            ref.domain,
            ref.path,
            load_hosts(self.hosts_dir, ref.domain),
            creds,
            self.tokens,
        )

    # -- manifests ------------------------------------------------------------

    async def _small_blob(
        self, client: RegistryClient, digest: str, lease: str, manifest: bool
    ) -> bytes:
        """A manifest or config: from the store if present, else fetched and verified."""
        self.store.lease_add(lease, "blob", digest)
        if self.content.exists(digest):
            return self.content.read(digest)
        if manifest:
            data, _ = await client.get_manifest(digest)
        else:
            data = await client.get_blob(digest)
        try:
            self.content.write(digest, data)
        except DigestMismatch as e:
            raise errors.InvalidArgument(f"{client.registry_host}/{client.repo}: {e}") from None
        return data

    async def pull(self, ref: Reference, creds: Credentials | None = None) -> ImageRow:
        client = self.client(ref, creds)
        lease = self.store.create_lease()
        progress = PullProgress(str(ref))
        self.progress[id(progress)] = progress
        try:
            if ref.digest:
                target = ref.digest
                data = await self._small_blob(client, target, lease, manifest=True)
                media_type = ""
            else:
                assert ref.tag is not None
                target, media_type, _ = await client.resolve(ref.tag)
                if target and self.content.exists(target):
                    self.store.lease_add(lease, "blob", target)
                    data = self.content.read(target)
                else:
                    data, media_type = await client.get_manifest(ref.tag)
                    actual = mf.sha256_digest(data)
                    if target and actual != target:
                        raise errors.InvalidArgument(
                            f"{ref}: manifest digest {actual} differs from the registry's "
                            f"Docker-Content-Digest {target}"
                        )
                    target = actual
                    self.store.lease_add(lease, "blob", target)
                    self.content.write(target, data)
                    crash_point("pull:manifest-stored")
            parsed = mf.parse(data, media_type, target)
            blobs = [target]
            if isinstance(parsed, mf.Index):
                desc = mf.select_platform(parsed)
                data = await self._small_blob(client, desc.digest, lease, manifest=True)
                parsed = mf.parse(data, desc.media_type, desc.digest)
                if not isinstance(parsed, mf.Manifest):
                    raise mf.ManifestError(f"{ref}: index entry {desc.digest} is not a manifest")
                blobs.append(desc.digest)
            manifest = parsed
            config_bytes = await self._small_blob(
                client, manifest.config.digest, lease, manifest=False
            )
            config = mf.parse_config(config_bytes, manifest.config.digest, len(manifest.layers))
            crash_point("pull:config-stored")
            names = [(ref.with_digest(target), target)]
            if ref.tag and not ref.digest:
                names.insert(0, (f"{ref.name}:{ref.tag}", target))
            return await self.commit_image(
                client, manifest, config, [*blobs, manifest.config.digest], names, lease, progress
            )
        finally:
            self.store.delete_lease(lease)
            self.progress.pop(id(progress), None)

    async def commit_image(
        self,
        client: RegistryClient | None,
        manifest: mf.Manifest,
        config: mf.ImageConfig,
        blobs: list[str],
        names: list[tuple[str, str]],
        lease: str,
        progress: PullProgress | None = None,
    ) -> ImageRow:
        """Unpack what the snapshots lack and record the image under `names`.

        With no registry client (an import), every layer blob must be in the store.
        """
        for layer in manifest.layers:
            layer.compression  # noqa: B018 - rejects an unknown media type before any work
        progress = progress or PullProgress(manifest.digest)
        await self._layers_for(client, manifest, config, lease, progress)
        chains = mf.chain_ids(config.diff_ids)
        row = ImageRow(
            id=manifest.config.digest,
            manifest_digest=manifest.digest,
            manifest_media_type=manifest.media_type,
            size=manifest.config.size + sum(x.size for x in manifest.layers),
            config=config.raw,
            layers=[
                {**x.to_dict(), "diffID": d}
                for x, d in zip(manifest.layers, config.diff_ids, strict=True)
            ],
            chain_id=chains[-1] if chains else "",
        )
        self.store.put_image(row, names, [*blobs, *(x.digest for x in manifest.layers)])
        crash_point("pull:image-recorded")
        image = self.store.get_image(row.id)
        assert image is not None
        return image

    # -- layers -----------------------------------------------------------------

    async def _layers_for(
        self,
        client: RegistryClient | None,
        manifest: mf.Manifest,
        config: mf.ImageConfig,
        lease: str,
        progress: PullProgress,
    ) -> None:
        chains = mf.chain_ids(config.diff_ids)
        parents: list[int] = []
        waits: list[SharedTask[None]] = []
        for desc, diff_id, chain in zip(manifest.layers, config.diff_ids, chains, strict=True):
            lp = progress.layers.setdefault(desc.digest, LayerProgress(desc.digest, desc.size))
            row = self.store.get_snapshot(chain)
            if row is not None and row.kind == "committed" and self.snapshotter.exists(row.id):
                self.store.lease_add(lease, "snapshot", chain)
                lp.state, lp.done = "exists", desc.size
                parents.append(row.id)
                continue
            joined = self._layers.get(chain)
            if joined is not None:
                sid, shared = joined
                self.store.lease_add(lease, "snapshot", chain)
            else:
                if row is None:
                    row = self.store.add_snapshot(
                        chain,
                        parents[-1] if parents else None,
                        "preparing",
                        self.snapshotter.name,
                        lease,
                    )
                    crash_point("pull:snapshot-added")
                else:  # left half-done by a crash or a failed pull: redo it
                    self.store.set_snapshot_kind(row.id, "preparing")
                    self.store.lease_add(lease, "snapshot", chain)
                    await asyncio.to_thread(self.snapshotter.remove, row.id)
                sid = row.id
                # native layers are applied onto a copy of the layer below: wait for it.
                below = waits[-1] if waits and self.snapshotter.layer_mode() == "native" else None
                shared = SharedTask(
                    self._layer(client, desc, diff_id, sid, list(parents), lease, lp, below),
                    name=f"layer {desc.digest[:19]}",
                )
                self._layers[chain] = (sid, shared)
                shared.task.add_done_callback(functools.partial(self._forget, chain))
            waits.append(shared)
            parents.append(sid)
        await asyncio.gather(*(w.join() for w in waits))

    def _forget(self, chain: str, _task: object) -> None:
        self._layers.pop(chain, None)

    async def _layer(
        self,
        client: RegistryClient | None,
        desc: mf.Descriptor,
        diff_id: str,
        sid: int,
        parents: list[int],
        lease: str,
        lp: LayerProgress,
        below: SharedTask[None] | None,
    ) -> None:
        if below is not None:
            await asyncio.shield(below.task)
        async with self._sem:
            dest = await asyncio.to_thread(self.snapshotter.prepare_layer, sid, parents)
            try:
                got = await self._fetch_and_unpack(client, desc, dest, lease, lp)
                if got != diff_id:
                    raise errors.InvalidArgument(
                        f"layer {desc.digest} unpacks to diff ID {got}, but the image "
                        f"config says {diff_id}"
                    )
            except BaseException as e:
                await asyncio.shield(asyncio.to_thread(self.snapshotter.remove, sid))
                if isinstance(e, errors.CrispyError | asyncio.CancelledError):
                    raise
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    raise errors.ResourceExhausted(f"layer {desc.digest}: {e}") from e
                if isinstance(
                    e, ValueError | EOFError | BadGzipFile | zstandard.ZstdError | IsalError
                ):
                    # Corrupt compression, a broken or hostile tar: the image is bad.
                    raise errors.InvalidArgument(
                        f"layer {desc.digest} can't be unpacked: {e}"
                    ) from e
                raise
            crash_point("pull:layer-unpacked")
            self.store.set_snapshot_kind(sid, "committed")
            crash_point("pull:layer-committed")
            lp.state = "done"

    async def _fetch_and_unpack(
        self,
        client: RegistryClient | None,
        desc: mf.Descriptor,
        dest: str,
        lease: str,
        lp: LayerProgress,
    ) -> str:
        """Unpack a layer into `dest`, downloading what the content store lacks; the diff ID."""
        mode = self.snapshotter.layer_mode()
        compression = desc.compression
        self.store.lease_add(lease, "blob", desc.digest)
        if self.content.exists(desc.digest):
            lp.state, lp.done = "unpacking", desc.size
            path = self.content.path(desc.digest)
            return await asyncio.to_thread(_unpack_file, path, compression, dest, mode)
        if client is None:
            raise errors.NotFound(f"layer {desc.digest} is neither stored nor fetchable")

        ingest = Ingest(self.content, desc.digest, desc.size)
        if ingest.offset == desc.size:
            # Every byte arrived, but the pull stopped (deadline, crash) before the commit:
            # no Range can fetch more, so verify what is on disk instead of asking.
            lp.state, lp.done = "unpacking", desc.size
            if await asyncio.to_thread(ingest.commit_complete):
                log.info("%s: committed the complete download left on disk", desc.digest)
                path = self.content.path(desc.digest)
                return await asyncio.to_thread(_unpack_file, path, compression, dest, mode)
            log.warning("%s: the complete download on disk has another digest", desc.digest)
            ingest = Ingest(self.content, desc.digest, desc.size)
        loop = asyncio.get_running_loop()
        pipe = ChunkPipe(loop)
        worker: asyncio.Future[str] | None = None
        try:
            async with self._open_at(client, desc, ingest.offset) as (resp, start):
                skip = ingest.offset - start
                if ingest.offset and start == 0:
                    log.info("%s: registry refused Range; downloading it whole", desc.digest)
                    ingest.reset()
                    skip = 0
                replay = ingest.partial_chunks() if ingest.offset else iter(())
                worker = loop.run_in_executor(
                    None, _unpack_stream, replay, pipe, ingest, compression, dest, mode
                )
                lp.state, lp.done = "downloading", ingest.offset
                await self._feed(resp, pipe, lp, skip)
            # The body ended early, or broke: resume from where it stopped.
            await self._finish_body(client, desc, ingest, pipe, lp)
            pipe.close()
            diff_id = await worker
            crash_point("pull:blob-downloaded")
            await asyncio.to_thread(ingest.commit)
            crash_point("pull:blob-committed")
            return diff_id
        except BaseException as e:
            pipe.close(error=e)
            if worker is not None:
                # The thread must stop touching the ingest and dest before we go on.
                await asyncio.shield(asyncio.wait([worker]))
                exc = None if worker.cancelled() else worker.exception()
                if exc is not None and not isinstance(exc, PipeClosed):
                    # The bytes themselves are bad (corrupt, too long, hostile): a resume
                    # would replay them, so they go.
                    ingest.discard()
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    raise exc from None
            if isinstance(e, DigestMismatch):
                ingest.discard()
            else:
                ingest.close()  # network trouble or a cancel: keep the bytes to resume
            raise

    @contextlib.asynccontextmanager
    async def _open(
        self, client: RegistryClient, desc: mf.Descriptor, offset: int
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The blob from the registry; a foreign layer from its `urls` (no credentials)."""
        urls = [u for u in desc.urls if u.startswith(("https://", "http://"))]
        try:
            async with client.open_blob(desc.digest, offset) as resp:
                yield resp
                return
        except errors.NotFound:
            if not urls:
                raise
        last: Exception | None = None
        for url in urls:
            try:
                async with client.open_url(url, offset) as resp:
                    yield resp
                    return
            except RegistryError as e:
                last = e
        raise last or errors.NotFound(f"layer {desc.digest}: no URL served it")

    @contextlib.asynccontextmanager
    async def _open_at(
        self, client: RegistryClient, desc: mf.Descriptor, offset: int
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, int]]:
        """The blob from `offset` (or earlier): the response and the offset it starts at.

        A registry that refuses the Range (416, a 200 with the whole body, a 206 from past
        `offset` or without a usable Content-Range) is asked for the whole blob, which
        starts at 0. A length that contradicts the descriptor raises SizeMismatch.
        """
        async with self._open(client, desc, offset) as resp:
            start = _usable_start(resp, desc, offset, client.registry_host)
            if start is not None:
                yield resp, start
                return
            if not offset:
                raise _unusable(client, desc, resp)
            log.info(
                "%s: registry answered %s to Range bytes=%d-; downloading it whole",
                desc.digest,
                resp.status,
                offset,
            )
        async with self._open(client, desc, 0) as resp:
            if _usable_start(resp, desc, 0, client.registry_host) != 0:
                raise _unusable(client, desc, resp)
            yield resp, 0

    async def _feed(
        self, resp: aiohttp.ClientResponse, pipe: ChunkPipe, lp: LayerProgress, skip: int = 0
    ) -> None:
        """Pass the body on, after dropping its first `skip` bytes (already on disk)."""
        try:
            async for chunk in resp.content.iter_any():
                self.bytes_downloaded += len(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    skip -= dropped
                    chunk = chunk[dropped:]
                    if not chunk:
                        continue
                await pipe.put(chunk)
                lp.done += len(chunk)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            log.info("%s: body broke at %d bytes: %s", lp.digest, lp.done, e)

    async def _finish_body(
        self,
        client: RegistryClient,
        desc: mf.Descriptor,
        ingest: Ingest,
        pipe: ChunkPipe,
        lp: LayerProgress,
    ) -> None:
        tries = 0
        while lp.done < desc.size:
            tries += 1
            if tries > BODY_RETRIES:
                raise RegistryError(
                    f"{client.registry_host}/{client.repo}: blob {desc.digest} broke off at "
                    f"{lp.done} of {desc.size} bytes {BODY_RETRIES} times"
                )
            await asyncio.sleep(BACKOFF * 2 ** (tries - 1))
            before = lp.done
            async with self._open_at(client, desc, lp.done) as (resp, start):
                await self._feed(resp, pipe, lp, lp.done - start)
            if lp.done > before:
                tries = 0  # progress was made: this is a flaky link, not a dead one


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def _unusable(
    client: RegistryClient, desc: mf.Descriptor, resp: aiohttp.ClientResponse
) -> RegistryError:
    what = f"{resp.status} {resp.headers.get('Content-Range', '')}".strip()
    return RegistryError(
        f"{client.registry_host}/{client.repo}: blob {desc.digest}: a download from byte 0 "
        f"got {what}",
        resp.status,
    )


def _usable_start(
    resp: aiohttp.ClientResponse, desc: mf.Descriptor, offset: int, host: str
) -> int | None:
    """Where the body starts if it can serve bytes from `offset` on, else None.

    Raises SizeMismatch when the registry states a blob length other than the
    descriptor's: no download or resume of that blob can ever verify.
    """
    total: int | None = None
    start: int | None = None
    if resp.status == 200:
        total, start = resp.content_length, 0
    else:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is not None:
            total = None if m.group(3) == "*" else int(m.group(3))
            if resp.status == 206 and m.group(1) is not None:
                start = int(m.group(1))
    if total is not None and total != desc.size:
        raise SizeMismatch(
            f"layer {desc.digest}: {host} serves {total} bytes, the manifest declares {desc.size}"
        )
    if start is None or start > offset:
        return None
    return start


def _unpack_stream(
    replay: object,
    pipe: ChunkPipe,
    ingest: Ingest,
    compression: str,
    dest: str,
    mode: str,
) -> str:
    """Worker thread: (replayed + new) compressed bytes -> ingest + unpacker; the diff ID."""
    source = CompressedSource(replay, pipe, ingest)  # type: ignore[arg-type]
    try:
        tar = HashingReader(decompressor(source, compression))
        apply_layer(cast(BinaryIO, tar), dest, mode=cast(LayerMode, mode))
        tar.drain()
        source.drain()  # every byte must reach the ingest for its digest
        return tar.digest
    except BaseException as e:
        pipe.fail_consumer(e)
        raise


def _unpack_file(path: str, compression: str, dest: str, mode: str) -> str:
    with open(path, "rb") as f:
        tar = HashingReader(decompressor(f, compression))
        apply_layer(cast(BinaryIO, tar), dest, mode=cast(LayerMode, mode))
        tar.drain()
        return tar.digest
