"""Image import and export as tar files, to move images between machines without a registry.

Import reads an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`)
or a `docker save` archive (`manifest.json` with `<id>.json` configs and
`<id>/layer.tar` layers, or newer Docker's `blobs/sha256/<hex>` paths), plain,
gzip- or zstd-compressed. The archive is read twice and never held in memory:
pass one reads the tar headers and the small JSON files (index, manifests,
configs) and plans every image, rejecting a malformed or hostile archive before
anything is written; pass two copies the blobs the plan needs into the content
store, each verified against its digest. The images are then unpacked and
recorded as a pull would, all under one lease, so a failure leaves nothing.

Export writes an OCI image layout tar (plus Docker's `manifest.json`, so
`docker load` takes it too) with the annotations containerd's `ctr image export`
writes, atomically (crispy.system.atomic: a temp file fsynced and renamed into place).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar, cast

import isal.isal_zlib
import zstandard

from crispy import errors
from crispy.images import manifest as mf
from crispy.images import reference
from crispy.images.content import ContentStore, DigestMismatch
from crispy.images.layerstream import decompressor
from crispy.images.reference import Reference
from crispy.images.service import Image, ImageService
from crispy.system.atomic import atomic_file

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT_VERSION = "1.0.0"

DOCKER_LAYER_TYPES = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
}

CHUNK = 1 << 20
METADATA_FILES = ("oci-layout", "index.json", "manifest.json", "repositories")
METADATA_MAX = 16 << 20  # manifest.json of a large `docker save` is still far below this
SMALL_MAX = 4 << 20  # registries cap manifests at 4 MiB; configs are smaller still
SMALL_TOTAL_MAX = 64 << 20  # all JSON held in memory: bounds what a hostile archive costs
MEMBERS_MAX = 100_000  # real image archives have a few entries per layer
SYMLINKS_MAX = 8

_BLOB_PATH = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")
_CONFIG_PATH = re.compile(r"^([a-f0-9]{64})\.json$")
_LAYER_ID_PATH = re.compile(r"^([a-f0-9]{64})/layer\.tar$")

T = TypeVar("T")

# What corrupt or truncated archive bytes raise, from tarfile and the decompressors.
_BAD_DATA: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    zstandard.ZstdError,
    cast(type[BaseException], isal.isal_zlib.error),
)


class _Stopped(Exception):
    """The caller was cancelled; the worker thread stops at the next chunk."""


class _MissingBlob(errors.InvalidArgument):
    """A blob the archive's index names is not in it."""


# -- reading the archive ---------------------------------------------------------------------


def _compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _sniff(path: str) -> str:
    """The archive's compression, from its magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise errors.NotFound(f"{path}: no such file") from None
    except OSError as e:
        raise errors.InvalidArgument(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ\x00"):
        raise errors.InvalidArgument(
            f"{path}: bzip2 and xz archives are not supported; decompress it, or use gzip"
        )
    return _compression(head)


@contextlib.contextmanager
def _open_tar(path: str, compression: str) -> Iterator[tarfile.TarFile]:
    """A tar reader yielding members in archive order; only the current one may be read.

    A plain tar is opened seekable so skipping a layer costs a seek; a compressed
    one is streamed, because seeking in it means decompressing from the start.
    """
    with open(path, "rb") as raw:
        try:
            with _reader(raw, compression) as tar:
                yield tar
        except _BAD_DATA as e:
            raise errors.InvalidArgument(f"{path}: not a readable tar archive: {e}") from None
        except OSError as e:
            if e.errno is not None:
                raise  # a real I/O error, not bad bytes
            raise errors.InvalidArgument(f"{path}: not a readable tar archive: {e}") from None


def _reader(raw: IO[bytes], compression: str) -> tarfile.TarFile:
    if compression == "none":
        return tarfile.open(fileobj=raw, mode="r:")
    return tarfile.open(fileobj=decompressor(raw, compression), mode="r|")


def _member_name(name: str) -> str | None:
    """A member's name relative to the archive root; None for names that point outside it."""
    if name.startswith("/"):
        return None
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _archive_path(value: object, what: str) -> str:
    """A path named inside manifest.json: relative and staying inside the archive."""
    if not isinstance(value, str) or not value:
        raise errors.InvalidArgument(f"{what}: a path is required, not {value!r}")
    if value.startswith("/") or "\x00" in value:
        raise errors.InvalidArgument(f"{what}: absolute path {value!r} is not allowed")
    norm = _member_name(value)
    if norm is None:
        raise errors.InvalidArgument(f"{what}: path {value!r} points outside the archive")
    return norm


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hard link"
    if m.isdir():
        return "directory"
    if m.isfifo():
        return "fifo"
    if m.ischr() or m.isblk():
        return "device"
    return "special file"


@dataclass
class _Member:
    index: int  # position in the archive: pass two finds the member by it
    name: str
    kind: str
    size: int
    linkname: str = ""
    head: bytes = b""  # first bytes of a regular file, for its compression
    digest: str | None = None  # sha256 of a compressed file whose name doesn't give it


@dataclass
class _Scan:
    path: str
    compression: str
    members: dict[str, _Member] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)  # JSON files by member name


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise _Stopped()


def _scan(path: str, stop: threading.Event) -> _Scan:
    """Pass one: every member's header, the JSON files' bytes, digests of compressed layers."""
    scan = _Scan(path, _sniff(path))
    held = 0
    with _open_tar(path, scan.compression) as tar:
        for index, info in enumerate(tar):
            _check(stop)
            if index >= MEMBERS_MAX:
                raise errors.InvalidArgument(f"{path}: more than {MEMBERS_MAX} entries")
            name = _member_name(info.name)
            if name is None:
                continue  # nothing may reference it
            m = _Member(index, name, _kind(info), info.size if info.isreg() else 0, info.linkname)
            scan.members[name] = m  # a later duplicate wins, as on extraction
            scan.small.pop(name, None)
            if m.kind != "file":
                continue
            f = tarfile_reader(tar, info)
            m.head = f.read(64)
            if name in METADATA_FILES or (
                m.size <= SMALL_MAX and m.head.lstrip()[:1] == b"{" and not _is_layer_path(name)
            ):
                if m.size > (METADATA_MAX if name in METADATA_FILES else SMALL_MAX):
                    raise errors.InvalidArgument(f"{path}: {name} is too large ({m.size} bytes)")
                held += m.size
                if held > SMALL_TOTAL_MAX:
                    raise errors.InvalidArgument(
                        f"{path}: more than {SMALL_TOTAL_MAX >> 20} MiB of JSON metadata"
                    )
                scan.small[name] = m.head + f.read()
            elif _compression(m.head) != "none" and not _BLOB_PATH.match(name):
                # A compressed docker-save layer: its digest is needed for the manifest
                # we write, before pass two copies it.
                h = hashlib.sha256(m.head)
                while chunk := f.read(CHUNK):
                    _check(stop)
                    h.update(chunk)
                m.digest = "sha256:" + h.hexdigest()
    return scan


def _is_layer_path(name: str) -> bool:
    return name.endswith("/layer.tar")


def tarfile_reader(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(info)
    assert f is not None  # a regular file always has a reader
    return f


# -- planning ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One image to import: everything checked, nothing written yet."""

    target: str  # what the names point at: an index or a manifest
    manifest: mf.Manifest
    config: mf.ImageConfig
    small: dict[str, bytes]  # index, manifest and config blobs by digest
    layers: list[tuple[str, int, _Member]]  # digest, size, where the bytes are
    names: list[tuple[str, str]]
    refs: list[Reference] = field(default_factory=list)

    @property
    def blobs(self) -> list[str]:
        return list(self.small)


def _names(ref: Reference, target: str) -> list[tuple[str, str]]:
    """The names a pull of `ref` records: name:tag and name@digest, both at `target`."""
    out = [(ref.repo_tag, target)] if ref.repo_tag else []
    out.append((ref.with_digest(target), target))
    return out


def _parse_name(value: str, what: str) -> Reference:
    try:
        return reference.parse(value)
    except errors.InvalidArgument as e:
        raise errors.InvalidArgument(f"{what}: {e}") from None


def _json(scan: _Scan, name: str) -> Any:
    try:
        return json.loads(scan.small[name])
    except ValueError as e:
        raise errors.InvalidArgument(f"{scan.path}: {name} is not JSON: {e}") from None


def _regular(scan: _Scan, path: str, what: str, follow: bool) -> _Member:
    """The regular file at `path`; symlinks inside the archive are followed if `follow`.

    `docker save` writes a layer that several images share once and links the
    others to it; anything else that is not a regular file is refused.
    """
    for _ in range(SYMLINKS_MAX):
        m = scan.members.get(path)
        if m is None:
            raise _MissingBlob(f"{what}: {path} is not in the archive")
        if m.kind == "file":
            return m
        if m.kind != "symlink" or not follow:
            raise errors.InvalidArgument(f"{what}: {path} is a {m.kind}, not a regular file")
        if m.linkname.startswith("/"):
            raise errors.InvalidArgument(f"{what}: {path} links outside the archive")
        target = _member_name(posixpath.join(posixpath.dirname(path), m.linkname))
        if target is None:
            raise errors.InvalidArgument(f"{what}: {path} links outside the archive")
        path = target
    raise errors.InvalidArgument(f"{what}: too many levels of symbolic links")


def _oci_blob(scan: _Scan, desc: mf.Descriptor) -> _Member:
    m = _regular(scan, f"blobs/sha256/{desc.digest[7:]}", f"blob {desc.digest}", follow=False)
    if m.size != desc.size:
        raise errors.InvalidArgument(
            f"blob {desc.digest} is {m.size} bytes in the archive, its descriptor says {desc.size}"
        )
    return m


def _oci_small(scan: _Scan, desc: mf.Descriptor) -> bytes:
    m = _oci_blob(scan, desc)
    data = scan.small.get(m.name)
    if data is None:
        raise errors.InvalidArgument(f"blob {desc.digest} is not a JSON document")
    actual = mf.sha256_digest(data)
    if actual != desc.digest:
        raise errors.InvalidArgument(f"blob {desc.digest} in the archive has digest {actual}")
    return data


def _annotated_ref(desc: mf.Descriptor) -> Reference | None:
    """An index entry's name: containerd's full-name annotation, else a full OCI ref.name.

    An OCI ref.name that is only a tag ("latest") names no repository, so it is unused.
    """
    annotations = dict(desc.annotations)
    full = annotations.get(ANNOTATION_IMAGE_NAME)
    if full:
        return _parse_name(full, f"annotation {ANNOTATION_IMAGE_NAME}")
    ref_name = annotations.get(ANNOTATION_REF_NAME, "")
    if any(c in ref_name for c in "/:@"):
        return _parse_name(ref_name, f"annotation {ANNOTATION_REF_NAME}")
    return None


def _plan_oci(scan: _Scan) -> list[_Plan]:
    layout = _json(scan, "oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != OCI_LAYOUT_VERSION:
        raise errors.InvalidArgument(f"unsupported OCI image layout version {version!r}")
    index = mf.parse(scan.small["index.json"], mf.OCI_INDEX, "index.json")
    if not isinstance(index, mf.Index):
        raise errors.InvalidArgument("index.json is not an image index")
    plans: dict[str, _Plan] = {}
    for desc in index.manifests:
        ref = _annotated_ref(desc)
        if desc.digest in plans:  # another name for an image already planned
            if ref is not None:
                plans[desc.digest].refs.append(ref)
            continue
        data = _oci_small(scan, desc)
        small = {desc.digest: data}
        parsed = mf.parse(data, desc.media_type, desc.digest)
        if isinstance(parsed, mf.Index):
            child = mf.select_platform(parsed)
            data = _oci_small(scan, child)
            small[child.digest] = data
            parsed = mf.parse(data, child.media_type, child.digest)
            if not isinstance(parsed, mf.Manifest):
                raise errors.InvalidArgument(f"index {desc.digest}: {child.digest} is no manifest")
        config_bytes = _oci_small(scan, parsed.config)
        small[parsed.config.digest] = config_bytes
        config = mf.parse_config(config_bytes, parsed.config.digest, len(parsed.layers))
        layers = []
        for layer in parsed.layers:
            layer.compression  # noqa: B018 - an unknown media type fails here, not mid-import
            layers.append((layer.digest, layer.size, _oci_blob(scan, layer)))
        plan = _Plan(desc.digest, parsed, config, small, layers, [])
        if ref is not None:
            plan.refs.append(ref)
        plans[desc.digest] = plan
    return list(plans.values())


def _digest_of_path(path: str) -> str | None:
    m = _BLOB_PATH.match(path)
    return f"sha256:{m.group(1)}" if m else None


def _docker_manifest(config: mf.Descriptor, layers: list[mf.Descriptor]) -> bytes:
    """A Docker schema 2 manifest for a saved image; the same archive gives the same bytes."""
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST,
        "config": config.to_dict(),
        "layers": [x.to_dict() for x in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _plan_docker(scan: _Scan) -> list[_Plan]:
    doc = _json(scan, "manifest.json")
    if not isinstance(doc, list):
        raise errors.InvalidArgument("manifest.json is not a list of images")
    repositories: dict[str, Any] = {}
    if "repositories" in scan.small:
        repos = _json(scan, "repositories")
        repositories = repos if isinstance(repos, dict) else {}
    plans: dict[str, _Plan] = {}
    for i, entry in enumerate(doc):
        what = f"manifest.json entry {i}"
        if not isinstance(entry, dict):
            raise errors.InvalidArgument(f"{what} is not an object")
        config_path = _archive_path(entry.get("Config"), f"{what} Config")
        config_member = _regular(scan, config_path, f"{what} Config", follow=True)
        config_bytes = scan.small.get(config_member.name)
        if config_bytes is None:
            raise errors.InvalidArgument(f"{what}: config {config_path} is not a JSON document")
        config_digest = mf.sha256_digest(config_bytes)
        named = _CONFIG_PATH.match(config_path)
        claimed = f"sha256:{named.group(1)}" if named else _digest_of_path(config_path)
        if claimed and claimed != config_digest:
            raise errors.InvalidArgument(f"{what}: config {config_path} has digest {config_digest}")
        layer_paths = entry.get("Layers")
        if not isinstance(layer_paths, list):
            raise errors.InvalidArgument(f"{what}: Layers is not a list")
        config = mf.parse_config(config_bytes, config_digest, len(layer_paths))
        descs: list[mf.Descriptor] = []
        members: list[_Member] = []
        for j, (value, diff_id) in enumerate(zip(layer_paths, config.diff_ids, strict=True)):
            path = _archive_path(value, f"{what} layer {j}")
            m = _regular(scan, path, f"{what} layer {j}", follow=True)
            compression = _compression(m.head)
            # An uncompressed layer's digest is its diff ID; pass two verifies either way.
            digest = (
                _digest_of_path(path)
                or _digest_of_path(m.name)
                or (diff_id if compression == "none" else m.digest)
            )
            if digest is None:
                raise errors.InvalidArgument(f"{what} layer {j}: digest unknown for {path}")
            descs.append(mf.Descriptor(DOCKER_LAYER_TYPES[compression], digest, m.size))
            members.append(m)
        config_desc = mf.Descriptor(mf.DOCKER_CONFIG, config_digest, len(config_bytes))
        manifest_bytes = _docker_manifest(config_desc, descs)
        digest = mf.sha256_digest(manifest_bytes)
        manifest = mf.parse(manifest_bytes, mf.DOCKER_MANIFEST, digest)
        assert isinstance(manifest, mf.Manifest)
        plan = plans.get(digest)
        if plan is None:
            plan = _Plan(
                digest,
                manifest,
                config,
                {digest: manifest_bytes, config_digest: config_bytes},
                [(d.digest, d.size, m) for d, m in zip(descs, members, strict=True)],
                [],
            )
            plans[digest] = plan
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise errors.InvalidArgument(f"{what}: RepoTags is not a list")
        if not tags and layer_paths:
            tags = _legacy_tags(repositories, str(layer_paths[-1]))
        for tag in tags:
            plan.refs.append(_parse_name(str(tag), f"{what} RepoTags"))
    return list(plans.values())


def _legacy_tags(repositories: dict[str, Any], top_layer: str) -> list[str]:
    """Names from the old `repositories` file: repo -> tag -> ID of the image's top layer."""
    m = _LAYER_ID_PATH.match(top_layer)
    if not m:
        return []
    return [
        f"{repo}:{tag}"
        for repo, tags in repositories.items()
        if isinstance(tags, dict)
        for tag, layer_id in tags.items()
        if layer_id == m.group(1)
    ]


def _plan(scan: _Scan, name: Reference | None) -> list[_Plan]:
    has_oci = "oci-layout" in scan.small and "index.json" in scan.small
    has_docker = "manifest.json" in scan.small
    if has_oci:
        try:
            plans = _plan_oci(scan)
        except _MissingBlob:
            # Docker 25+ saves an OCI index of every platform but only this one's blobs;
            # its manifest.json names exactly what it saved.
            if not has_docker:
                raise
            plans = _plan_docker(scan)
    elif has_docker:
        plans = _plan_docker(scan)
    else:
        raise errors.InvalidArgument(
            f"{scan.path}: neither an OCI image layout (oci-layout, index.json) nor a "
            "docker save archive (manifest.json)"
        )
    if not plans:
        raise errors.InvalidArgument(f"{scan.path}: the archive holds no images")
    if name is not None:
        if len(plans) > 1:
            raise errors.InvalidArgument(
                f"a name can be given only to an archive of one image; this one has {len(plans)}"
            )
        plans[0].refs = [name]
    for plan in plans:
        seen: set[str] = set()
        for ref in plan.refs:
            for n in _names(ref, plan.target):
                if n[0] not in seen:
                    seen.add(n[0])
                    plan.names.append(n)
    return plans


def _read_archive(
    path: str, name: Reference | None, stop: threading.Event
) -> tuple[_Scan, list[_Plan]]:
    scan = _scan(path, stop)
    return scan, _plan(scan, name)


# -- copying blobs --------------------------------------------------------------------------


def _copy_blobs(
    scan: _Scan,
    content: ContentStore,
    wanted: dict[int, dict[str, int]],
    stop: threading.Event,
) -> None:
    """Pass two: the members `wanted` (archive index -> digest -> size) into the store."""
    remaining = dict(wanted)
    with _open_tar(scan.path, scan.compression) as tar:
        for index, info in enumerate(tar):
            _check(stop)
            if not remaining:
                break
            targets = remaining.pop(index, None)
            if targets is None:
                continue
            if not info.isreg():
                raise errors.InvalidArgument(f"{scan.path} changed while it was imported")
            f = tarfile_reader(tar, info)
            ingests = [content.ingest(d, size) for d, size in targets.items()]
            try:
                for ingest in ingests:
                    if ingest.offset:  # a pull's leftovers: these bytes come from the archive
                        ingest.reset()
                while chunk := f.read(CHUNK):
                    _check(stop)
                    for ingest in ingests:
                        ingest.write(chunk)
                for ingest in ingests:
                    ingest.commit()
            except DigestMismatch as e:
                for ingest in ingests:
                    ingest.discard()
                raise errors.InvalidArgument(f"archive member {info.name}: {e}") from None
            except BaseException:
                for ingest in ingests:
                    ingest.discard()
                raise
    if remaining:
        raise errors.InvalidArgument(f"{scan.path} changed while it was imported")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args, stop)` in a thread; a cancel stops it and waits for it to let go."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, stop))
    try:
        return await asyncio.shield(task)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.ResourceExhausted(str(e)) from None
        raise
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: it is the _Stopped we caused
        raise


# -- import -----------------------------------------------------------------------------------


async def import_archive(svc: ImageService, path: str, name: str | None = None) -> list[Image]:
    """Import every image of an OCI layout or docker save tar; the images, in archive order.

    `name`, for an archive of one image, replaces the names the archive gives it.
    An image without a name is recorded without one, found by its ID.
    """
    override = None
    if name:
        override = _parse_name(name, "name")
        if override.digest:
            raise errors.InvalidArgument(f"name {name!r}: give a name[:tag], not a digest")
    scan, plans = await _in_thread(_read_archive, path, override)

    existed = {
        p.manifest.config.digest
        for p in plans
        if svc.store.get_image(p.manifest.config.digest) is not None
    }
    lease = svc.store.create_lease()
    committed: list[str] = []
    ok = False
    try:
        for plan in plans:
            for digest, data in plan.small.items():
                svc.store.lease_add(lease, "blob", digest)
                await asyncio.to_thread(svc.content.write, digest, data)
        wanted: dict[int, dict[str, int]] = {}
        for plan in plans:
            for digest, size, member in plan.layers:
                svc.store.lease_add(lease, "blob", digest)
                if not svc.content.exists(digest):
                    wanted.setdefault(member.index, {})[digest] = size
        if wanted:
            await _in_thread(_copy_blobs, scan, svc.content, wanted)
        images = []
        for plan in plans:
            row = await svc.puller.commit_image(
                None, plan.manifest, plan.config, plan.blobs, plan.names, lease
            )
            committed.append(row.id)
            images.append(svc.to_image(row))
        ok = True
        return images
    finally:
        if not ok:
            # All or nothing: images this import created go again.
            for image_id in committed:
                if image_id not in existed:
                    svc.store.delete_image(image_id)
            # A failed layer fails the unpack while its siblings still run; collected
            # while in flight, they would outlive the import as half-made snapshots.
            chains = {c for p in plans for c in mf.chain_ids(p.config.diff_ids)}
            while chains & svc.puller.in_flight_chain_ids():
                await asyncio.sleep(0.05)
        svc.store.delete_lease(lease)
        if not ok:
            await asyncio.shield(svc.gc_async(keep_ingests=True))


# -- export -----------------------------------------------------------------------------------


def _platform(config: dict[str, Any]) -> dict[str, str]:
    plat = {k: str(config[k]) for k in ("architecture", "os", "variant") if config.get(k)}
    return plat


def _export_names(ref: str, names: list[str]) -> list[str]:
    """The tags to annotate: the one asked for, else (an ID, a digest) all the image's tags."""
    tags = [n for n in names if "@" not in n]
    if not reference.looks_like_image_id(ref):
        with contextlib.suppress(errors.InvalidArgument):
            parsed = reference.parse(ref)
            if not parsed.digest and parsed.repo_tag in tags:
                return [parsed.repo_tag]
    return tags


def _root(
    svc: ImageService, row_manifest: str, media_type: str, config: dict[str, Any], name: str | None
) -> tuple[dict[str, Any], list[str]]:
    """The index.json entry for an image: the index its name points at if we hold it
    (so the repo digest survives the trip), else its manifest."""
    if name is not None:
        target = svc.store.name_target(name)
        if target and target[1] != row_manifest and svc.content.exists(target[1]):
            data = svc.content.read(target[1])
            with contextlib.suppress(errors.InvalidArgument):
                parsed = mf.parse(data, "", target[1])
                if isinstance(parsed, mf.Index) and any(
                    d.digest == row_manifest for d in parsed.manifests
                ):
                    desc = {"mediaType": parsed.media_type, "digest": target[1], "size": len(data)}
                    return desc, [target[1]]
    desc = {
        "mediaType": media_type,
        "digest": row_manifest,
        "size": svc.content.size(row_manifest),
    }
    plat = _platform(config)
    if plat.get("os") and plat.get("architecture"):
        desc["platform"] = plat
    return desc, []


async def export_archive(svc: ImageService, refs: list[str], path: str) -> None:
    """Write the images `refs` name to `path` as an OCI image layout tar."""
    if not refs:
        raise errors.InvalidArgument("no images to export")
    # Held while the blobs are read: a RemoveImage meanwhile must not collect them.
    lease = svc.store.create_lease()
    try:
        roots: list[dict[str, Any]] = []  # index.json entries
        docker: dict[str, dict[str, Any]] = {}  # manifest.json entries by image ID
        blobs: dict[str, None] = {}  # every blob once, in order
        for ref in refs:
            row = svc.resolve(ref)
            if row is None:
                raise errors.NotFound(f"image {ref!r} not found")
            layers = [str(x["digest"]) for x in row.layers]
            own = [row.manifest_digest, row.id, *layers]
            for digest in own:
                svc.store.lease_add(lease, "blob", digest)
                if not svc.content.exists(digest):
                    raise errors.FailedPrecondition(
                        f"image {ref}: blob {digest} is missing from the content store; "
                        "pull the image again"
                    )
            entry = docker.setdefault(
                row.id,
                {
                    "Config": f"blobs/sha256/{row.id[7:]}",
                    "RepoTags": [],
                    "Layers": [f"blobs/sha256/{d[7:]}" for d in layers],
                },
            )
            names: list[str | None] = [*_export_names(ref, row.names)] or [None]
            for name in names:
                root, extra = _root(
                    svc, row.manifest_digest, row.manifest_media_type, row.config, name
                )
                for digest in extra:
                    svc.store.lease_add(lease, "blob", digest)
                if name is not None:
                    root["annotations"] = {
                        ANNOTATION_IMAGE_NAME: name,
                        ANNOTATION_REF_NAME: reference.parse(name).tag or "",
                    }
                    if name not in entry["RepoTags"]:
                        entry["RepoTags"].append(name)
                if root not in roots:
                    roots.append(root)
                blobs.update(dict.fromkeys([*extra, *own]))
        index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": roots}
        files = {
            "oci-layout": json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode(),
            "index.json": json.dumps(index).encode(),
            # Docker's own format beside the OCI one, for a `docker load` older than 25.
            "manifest.json": json.dumps(list(docker.values())).encode(),
        }
        await _in_thread(_write_layout, svc.content, files, list(blobs), path)
    finally:
        svc.store.delete_lease(lease)


class _HashingReader:
    """A blob being copied into the tar, hashed on the way: a store bit-flip fails the export."""

    def __init__(self, f: IO[bytes], stop: threading.Event) -> None:
        self._f = f
        self._stop = stop
        self.hasher = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        _check(self._stop)
        data = self._f.read(n)
        self.hasher.update(data)
        return data


def _tarinfo(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0  # the same images give the same archive
    return info


def _write_layout(
    content: ContentStore,
    files: dict[str, bytes],
    blobs: list[str],
    path: str,
    stop: threading.Event,
) -> None:
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise errors.InvalidArgument(f"{path} is a directory")
    if not os.path.isdir(directory):
        raise errors.NotFound(f"directory {directory} does not exist")
    with (
        atomic_file(path) as out,
        tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar,
    ):
        # Metadata first, so a reader that streams the tar knows what follows.
        for name, data in files.items():
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        tar.addfile(_tarinfo("blobs", 0, tarfile.DIRTYPE))
        tar.addfile(_tarinfo("blobs/sha256", 0, tarfile.DIRTYPE))
        for digest in blobs:
            with content.open(digest) as f:
                size = os.fstat(f.fileno()).st_size
                reader = _HashingReader(f, stop)
                info = _tarinfo(f"blobs/sha256/{digest[7:]}", size)
                tar.addfile(info, cast(IO[bytes], reader))
            if "sha256:" + reader.hasher.hexdigest() != digest:
                raise errors.FailedPrecondition(
                    f"blob {digest} in the content store is corrupt; pull the image again"
                )
