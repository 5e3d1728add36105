"""A small deterministic OCI / Docker image builder for tests.

Everything here produces the same bytes on every run: tar entries carry a fixed mtime and
empty user/group names, gzip streams have mtime 0, and JSON is serialised with sorted keys and
compact separators.  So digests are stable for a given /bin/busybox, but tests should still
read them from the records rather than hard-code them.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import platform as _platform
import posixpath
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .registry import Registry, sha256_digest

EPOCH = 1704067200  # 2024-01-01T00:00:00Z, the mtime of every tar entry
CREATED = "2024-01-01T00:00:00Z"
BUSYBOX = Path("/bin/busybox")
GZIP_LEVEL = 6  # level 9 takes twice as long for <1% smaller blobs

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MediaKind = Literal["oci", "docker"]


@dataclass(frozen=True)
class MediaTypes:
    manifest: str
    index: str
    config: str
    layer: str


MEDIA_TYPES: dict[MediaKind, MediaTypes] = {
    "oci": MediaTypes(OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER_GZIP),
    "docker": MediaTypes(DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
}

# All manifest-ish types, for an Accept header that takes whatever the registry holds.
ALL_MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)

BUSYBOX_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
BUSYBOX_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# -- platforms -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """An OCI platform in Go naming (GOOS/GOARCH and the optional variant)."""

    os: str
    architecture: str
    variant: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_MACHINE_TO_GO: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv8l": ("arm", "v7"),  # 32-bit userland on a 64-bit core
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
    "loongarch64": ("loong64", None),
}


def go_platform(machine: str) -> Platform:
    """Map a ``uname -m`` machine name to the OCI/Go platform name."""
    arch, variant = _MACHINE_TO_GO.get(machine, (machine, None))
    return Platform("linux", arch, variant)


def host_platform() -> Platform:
    return go_platform(_platform.machine())


def foreign_platform(host: Platform | None = None) -> Platform:
    """A platform this host is not: amd64 on arm64 hosts, arm64 everywhere else."""
    host = host or host_platform()
    return Platform("linux", "amd64" if host.architecture == "arm64" else "arm64")


# -- layers ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layer:
    """One gzip-compressed layer: the uncompressed tar, the blob and their identities."""

    tar: bytes
    blob: bytes
    digest: str  # sha256 of blob: what manifests reference
    diff_id: str  # sha256 of tar: what the image config's rootfs lists
    size: int  # len(blob)

    @classmethod
    def from_tar(cls, tar: bytes) -> Layer:
        blob = gzip.compress(tar, compresslevel=GZIP_LEVEL, mtime=0)
        return cls(tar, blob, sha256_digest(blob), sha256_digest(tar), len(blob))

    def members(self) -> list[tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.tar)) as tf:
            return tf.getmembers()

    def names(self) -> list[str]:
        return [m.name for m in self.members()]


def _norm(path: str) -> str:
    """Tar member name for an absolute or relative path: relative, no ./ and no trailing /."""
    name = posixpath.normpath("/" + path).lstrip("/")
    if not name:
        raise ValueError(f"not a usable tar path: {path!r}")
    return name


class LayerBuilder:
    """Collects tar entries in order; ``tar()`` serialises them, ``build()`` makes a Layer.

    Paths may be given with or without a leading slash.  Parent directories are NOT added
    implicitly, so tests can build layers that rely on a lower layer's directories.
    """

    def __init__(self, mtime: int = EPOCH) -> None:
        self.mtime = mtime
        self._entries: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(_norm(path))
        info.type = kind
        info.mode = mode & 0o7777
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> LayerBuilder:
        self._entries.append((self._info(path, tarfile.DIRTYPE, mode, uid, gid), None))
        return self

    def file(
        self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> LayerBuilder:
        content = data.encode() if isinstance(data, str) else data
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(content)
        self._entries.append((info, content))
        return self

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> LayerBuilder:
        info = self._info(path, tarfile.SYMTYPE, 0o777, uid, gid)
        info.linkname = target  # stored verbatim: may be absolute or relative
        self._entries.append((info, None))
        return self

    def hardlink(self, path: str, target: str) -> LayerBuilder:
        """A hard link to ``target``, which must be an earlier entry of this layer."""
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = _norm(target)
        self._entries.append((info, None))
        return self

    def whiteout(self, path: str) -> LayerBuilder:
        """Delete ``path`` of lower layers (writes ``<dir>/.wh.<name>``)."""
        parent, name = posixpath.split(_norm(path))
        return self.file(posixpath.join(parent, ".wh." + name), b"", mode=0o644)

    def opaque(self, dirpath: str) -> LayerBuilder:
        """Hide everything lower layers put in ``dirpath`` (writes ``.wh..wh..opq``)."""
        return self.file(posixpath.join(_norm(dirpath), ".wh..wh..opq"), b"", mode=0o644)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, content in self._entries:
                tf.addfile(info, io.BytesIO(content) if content is not None else None)
        return buf.getvalue()

    def build(self) -> Layer:
        return Layer.from_tar(self.tar())


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True)
    return tuple(sorted({n for n in out.stdout.split() if n and n != "busybox"}))


def build_busybox_layer() -> Layer:
    """A minimal root filesystem: /bin/busybox, one hard link per applet, passwd and group."""
    b = LayerBuilder()
    for d in ("bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "var"):
        b.dir(d, mode=0o700 if d == "root" else 0o755)
    b.dir("tmp", mode=0o1777)
    b.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    for applet in busybox_applets():
        b.hardlink(f"bin/{applet}", "bin/busybox")
    b.file("etc/passwd", BUSYBOX_PASSWD)
    b.file("etc/group", BUSYBOX_GROUP)
    return b.build()


@functools.cache
def busybox_layer() -> Layer:
    """``build_busybox_layer()``, built once per process (it compresses ~2 MB)."""
    return build_busybox_layer()


# -- configs and manifests -------------------------------------------------------------------


def image_config(
    layers: Sequence[Layer],
    *,
    platform: Platform | None = None,
    env: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    exposed_ports: dict[str, dict[str, Any]] | None = None,
    volumes: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    stop_signal: str | None = None,
    history: Sequence[str] | None = None,
) -> dict[str, Any]:
    """An OCI image config (also valid as a Docker one); unset fields are left out."""
    plat = platform or host_platform()
    runtime: dict[str, Any] = {}
    for key, value in (
        ("Env", env),
        ("Entrypoint", entrypoint),
        ("Cmd", cmd),
        ("WorkingDir", working_dir),
        ("User", user),
        ("ExposedPorts", exposed_ports),
        ("Volumes", volumes),
        ("Labels", labels),
        ("StopSignal", stop_signal),
    ):
        if value is not None:
            runtime[key] = list(value) if isinstance(value, tuple | list) else value
    created_by = (
        list(history) if history is not None else [f"layer {i}" for i in range(len(layers))]
    )
    if len(created_by) != len(layers):
        raise ValueError("history needs one entry per layer")
    config: dict[str, Any] = {
        "architecture": plat.architecture,
        "os": plat.os,
        "created": CREATED,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": c} for c in created_by],
    }
    if plat.variant:
        config["variant"] = plat.variant
    return config


def _descriptor(media_type: str, data_digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": data_digest, "size": size}


def build_manifest(config_bytes: bytes, layers: Sequence[Layer], media: MediaKind = "oci") -> bytes:
    types = MEDIA_TYPES[media]
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": types.manifest,
            "config": _descriptor(types.config, sha256_digest(config_bytes), len(config_bytes)),
            "layers": [_descriptor(types.layer, lyr.digest, lyr.size) for lyr in layers],
        }
    )


@dataclass(frozen=True)
class UnpackExpectation:
    """What a correct unpack of an image's layers must leave in the root filesystem."""

    files: dict[str, bytes] = field(default_factory=dict)  # absolute path -> exact content
    dirs: tuple[str, ...] = ()  # absolute paths that must be directories
    absent: tuple[str, ...] = ()  # absolute paths that must not exist (lstat fails)


@dataclass(frozen=True, eq=False)
class PushedImage:
    """An image manifest in the registry, with everything it references."""

    registry: str  # host:port
    repo: str
    tag: str | None  # None when pushed by digest only (index children)
    media_type: str  # of the manifest
    digest: str  # of the manifest
    manifest: bytes
    config_digest: str
    config_bytes: bytes
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    expect: UnpackExpectation | None = None

    @property
    def reference(self) -> str:
        """``host/repo:tag`` (or ``host/repo@digest`` when untagged)."""
        return f"{self.registry}/{self.repo}:{self.tag}" if self.tag else self.digest_reference

    @property
    def digest_reference(self) -> str:
        return f"{self.registry}/{self.repo}@{self.digest}"

    @property
    def image_id(self) -> str:
        return self.config_digest

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def size(self) -> int:
        """Compressed layer sizes plus config size, as CRI's ImageStatus reports it."""
        return sum(layer.size for layer in self.layers) + len(self.config_bytes)

    @property
    def platform(self) -> Platform:
        return Platform(self.config["os"], self.config["architecture"], self.config.get("variant"))

    def with_tag(self, tag: str) -> PushedImage:
        return dataclasses.replace(self, tag=tag)


def push_image(
    registry: Registry,
    repo: str,
    tag: str | None,
    layers: Sequence[Layer],
    config: dict[str, Any],
    *,
    media: MediaKind = "oci",
    expect: UnpackExpectation | None = None,
) -> PushedImage:
    """Push layers, config and manifest; the manifest goes under ``tag`` or, if None, its
    digest.  The config is not checked against the layers, so broken images can be made."""
    config_bytes = canonical_json(config)
    for layer in layers:
        registry.push_blob(repo, layer.blob)
    config_digest = registry.push_blob(repo, config_bytes)
    manifest = build_manifest(config_bytes, layers, media)
    media_type = MEDIA_TYPES[media].manifest
    digest = registry.push_manifest(repo, tag or sha256_digest(manifest), manifest, media_type)
    return PushedImage(
        registry=registry.host,
        repo=repo,
        tag=tag,
        media_type=media_type,
        digest=digest,
        manifest=manifest,
        config_digest=config_digest,
        config_bytes=config_bytes,
        config=config,
        layers=tuple(layers),
        expect=expect,
    )


def tag_image(registry: Registry, image: PushedImage, tag: str) -> PushedImage:
    """Push the very same manifest bytes under another tag of the image's repo."""
    registry.push_manifest(image.repo, tag, image.manifest, image.media_type)
    return image.with_tag(tag)


@dataclass(frozen=True, eq=False)
class PushedIndex:
    """An OCI image index or Docker manifest list in the registry, and its children."""

    registry: str
    repo: str
    tag: str
    media_type: str
    digest: str
    manifest: bytes
    images: tuple[PushedImage, ...]  # in index order

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repo}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        return f"{self.registry}/{self.repo}@{self.digest}"

    @property
    def child_digests(self) -> list[str]:
        return [image.digest for image in self.images]

    @property
    def platforms(self) -> list[Platform]:
        return [image.platform for image in self.images]

    def for_platform(self, architecture: str, variant: str | None = None) -> PushedImage:
        for image in self.images:
            p = image.platform
            if p.architecture == architecture and (variant is None or p.variant == variant):
                return image
        raise KeyError(f"no {architecture} image in {self.reference}")


def build_index(images: Sequence[PushedImage], media: MediaKind = "oci") -> bytes:
    entries = []
    for image in images:
        entry = _descriptor(image.media_type, image.digest, len(image.manifest))
        entry["platform"] = image.platform.to_dict()
        entries.append(entry)
    return canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPES[media].index, "manifests": entries}
    )


def push_index(
    registry: Registry,
    repo: str,
    tag: str,
    images: Sequence[PushedImage],
    *,
    media: MediaKind = "oci",
) -> PushedIndex:
    """Push an index over ``images``, which must already be in ``repo``; each entry's
    platform comes from the image's config."""
    for image in images:
        if image.repo != repo:
            raise ValueError(f"{image.digest_reference} is not in {repo}")
    index = build_index(images, media)
    media_type = MEDIA_TYPES[media].index
    digest = registry.push_manifest(repo, tag, index, media_type)
    return PushedIndex(registry.host, repo, tag, media_type, digest, index, tuple(images))
