"""OCI and Docker manifest formats: media types, parsing, platform selection, chain IDs."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from crispy.errors import InvalidArgument

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# What we ask a registry for, preferred first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class ManifestError(InvalidArgument):
    """A manifest, index or config that crispy can't use."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ManifestError(f"unsupported or malformed digest {digest!r}")
    return digest


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """This machine in Go's GOOS/GOARCH naming, as registries label images."""
    machine = _platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def compression(self) -> str:
        try:
            return LAYER_COMPRESSION[self.media_type]
        except KeyError:
            raise ManifestError(f"unsupported layer media type {self.media_type!r}") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            d["urls"] = list(self.urls)
        return d


def _descriptor(d: Any, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise ManifestError(f"{what}: not an object")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what}: bad size {size!r}")
    plat = d.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = Platform(
            str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", ""))
        )
    urls = d.get("urls") or ()
    annotations = d.get("annotations") or {}
    return Descriptor(
        media_type=str(d.get("mediaType", "")),
        digest=check_digest(d.get("digest", "")),
        size=size,
        urls=tuple(str(u) for u in urls) if isinstance(urls, list) else (),
        platform=platform,
        annotations=tuple(sorted(annotations.items())) if isinstance(annotations, dict) else (),
    )


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    digest: str
    raw: bytes = field(repr=False)


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]
    digest: str
    raw: bytes = field(repr=False)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ManifestError(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return doc


def parse(data: bytes, media_type: str, digest: str) -> Manifest | Index:
    """Parse a manifest or index; the body's own mediaType wins over the HTTP header."""
    doc = _json_object(data, f"manifest {digest}")
    header = media_type.split(";")[0].strip()
    mt = doc.get("mediaType") or (header if header in (*MANIFEST_TYPES, *INDEX_TYPES) else "")
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestError(
            "Docker schema 1 manifests are not supported (deprecated since 2017); "
            "push the image again with a current client"
        )
    if not mt:
        # An OCI manifest may omit mediaType: tell them apart by their fields.
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if mt in INDEX_TYPES:
        items = doc.get("manifests")
        if not isinstance(items, list):
            raise ManifestError(f"index {digest} has no manifests list")
        return Index(
            mt,
            [_descriptor(m, f"index {digest} entry {i}") for i, m in enumerate(items)],
            digest,
            data,
        )
    if mt in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestError(f"manifest {digest} has no layers list")
        return Manifest(
            mt,
            _descriptor(doc.get("config"), f"manifest {digest} config"),
            [_descriptor(x, f"manifest {digest} layer {i}") for i, x in enumerate(layers)],
            digest,
            data,
        )
    raise ManifestError(f"unsupported manifest media type {mt!r} ({digest})")


def select_platform(index: Index, want: Platform | None = None) -> Descriptor:
    """The manifest of an index for this platform, as containerd's platform matcher picks.

    An exact os/arch/variant match wins; an entry without a variant matches any
    variant of its architecture; arm64 accepts an unset or v8 variant.
    """
    want = want or host_platform()
    best: tuple[int, Descriptor] | None = None
    for d in index.manifests:
        if d.media_type and d.media_type not in MANIFEST_TYPES:
            continue  # attestation manifests and nested indexes are not runnable
        p = d.platform
        if p is None or p.os != want.os or p.architecture != want.architecture:
            continue
        if p.variant == want.variant:
            score = 2
        elif not p.variant or (want.architecture == "arm64" and p.variant in ("", "v8")):
            score = 1
        else:
            continue
        if best is None or score > best[0]:
            best = (score, d)
    if best is None:
        available = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
        raise ManifestError(
            f"no image for platform {want} in index {index.digest} (available: {available})"
        )
    return best[1]


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0);
    ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


@dataclass
class ImageConfig:
    raw: dict[str, Any]
    diff_ids: list[str]

    @property
    def config(self) -> dict[str, Any]:
        c = self.raw.get("config")
        return c if isinstance(c, dict) else {}

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")


def parse_config(data: bytes, digest: str, layer_count: int) -> ImageConfig:
    doc = _json_object(data, f"image config {digest}")
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ManifestError(f"image config {digest} has no rootfs.diff_ids")
    diff_ids = [check_digest(d) for d in diff_ids]
    if len(diff_ids) != layer_count:
        raise ManifestError(
            f"image config {digest} lists {len(diff_ids)} diff_ids for {layer_count} layers"
        )
    return ImageConfig(doc, diff_ids)
