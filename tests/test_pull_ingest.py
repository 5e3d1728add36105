"""Ingests left by cancelled pulls and crashes, and registries that refuse Range requests.

A layer whose bytes all arrived but were never committed (a deadline or a SIGKILL between
the last byte and the commit) must be verified and committed from disk, or discarded when
its digest is wrong, without a request to the registry; a registry that refuses a Range
(416, 200 with the whole body, a 206 at another offset) gets a full download instead.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from pathlib import Path

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.images.service import ImageService
from support.daemon import Crispyd
from support.faultproxy import FaultProxy
from support.images import (
    MEDIA_TYPES,
    Layer,
    LayerBuilder,
    PushedImage,
    build_manifest,
    canonical_json,
    image_config,
    push_image,
)
from support.imagesvc import mounted_rootfs, run
from support.registry import Registry
from support.registry_fixtures import TestImages


def _ingest_file(root: Path, digest: str) -> Path:
    """Where crispy keeps the download of `digest` in progress (a daemon's or service's root)."""
    return root / "content" / "ingest" / digest.split(":", 1)[1] / "data"


def _plant_ingest(tmp_path: Path, digest: str, data: bytes) -> Path:
    """An ingest as a cancelled pull or a crash leaves it, for an in-process service."""
    path = _ingest_file(tmp_path / "root", digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def _wait_for_size(path: Path, size: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size == size:
            return
        time.sleep(0.05)
    have = path.stat().st_size if path.exists() else None
    raise AssertionError(f"{path}: {have} bytes, want {size}")


def _unique_image(registry: Registry, name: str) -> PushedImage:
    layer = LayerBuilder().file("unique", secrets.token_bytes(256 << 10)).build()
    return push_image(registry, name, "latest", [layer], image_config([layer]))


def test_complete_ingest_after_a_kill_is_committed_without_the_registry(
    daemon_dir: Path, registry: Registry, fault_proxy: FaultProxy
) -> None:
    """The deadline expires after the last byte; crispyd is SIGKILLed before a retry."""
    img = _unique_image(registry, "crispy-test/ingest-complete")
    layer = img.layers[0]
    ref = fault_proxy.reference(img.repo, "latest")
    fault_proxy.hold_end(layer.digest)  # every byte goes out, the response never ends
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
            with pytest.raises(grpc.RpcError) as e:
                c.image.PullImage(req, timeout=2)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert fault_proxy.bytes_sent(layer.digest) == layer.size
        ingest = _ingest_file(d.root, layer.digest)
        _wait_for_size(ingest, layer.size)  # the cancel flushed the whole blob
        d.kill()
        fault_proxy.clear_faults()
        d.start()
        with d.client() as c:
            assert c.image.PullImage(req, timeout=60).image_ref == img.config_digest
            status = c.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
            assert status.image.id == img.config_digest
        gets = fault_proxy.requests(layer.digest, "GET")
        assert len(gets) == 1, [(g.range, g.status) for g in gets]  # only the held one
        assert gets[0].range is None
        assert not ingest.parent.exists()
        assert (d.root / "content" / "blobs" / "sha256" / layer.digest[7:]).exists()
    finally:
        d.stop()


def test_kill_after_the_last_byte_then_commit_without_the_registry(
    daemon_dir: Path, registry: Registry, fault_proxy: FaultProxy
) -> None:
    """SIGKILL, no cancel: every byte was received while the response had not ended."""
    img = _unique_image(registry, "crispy-test/ingest-killed")
    layer = img.layers[0]
    ref = fault_proxy.reference(img.repo, "latest")
    fault_proxy.hold_end(layer.digest)
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
            call = c.image.PullImage.future(req, timeout=60)
            ingest = _ingest_file(d.root, layer.digest)
            _wait_for_size(ingest, layer.size)
            d.kill()
            with pytest.raises(grpc.RpcError):
                call.result()
        fault_proxy.clear_faults()
        d.start()
        with d.client() as c:
            assert c.image.PullImage(req, timeout=60).image_ref == img.config_digest
        assert len(fault_proxy.requests(layer.digest, "GET")) == 1
        assert not ingest.parent.exists()
    finally:
        d.stop()


def test_complete_ingest_is_committed_on_the_next_pull(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    ingest = _plant_ingest(tmp_path, layer.digest, layer.blob)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.exists(layer.digest)
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()

    run(tmp_path, body)
    assert fault_proxy.requests(layer.digest) == []
    assert not ingest.parent.exists()


def test_complete_ingest_with_a_wrong_digest_is_discarded_and_downloaded(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    bad = bytearray(layer.blob)
    bad[len(bad) // 2] ^= 0xFF
    ingest = _plant_ingest(tmp_path, layer.digest, bytes(bad))

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.read(layer.digest) == layer.blob

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert [g.range for g in gets] == [None]  # one full download, no Range
    assert gets[0].bytes_sent == layer.size
    assert not ingest.parent.exists()


@pytest.mark.parametrize("content_range", [False, True], ids=["bare", "content-range"])
def test_416_falls_back_to_a_full_download(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy, content_range: bool
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    _plant_ingest(tmp_path, layer.digest, layer.blob[: layer.size // 2])
    headers = {"Content-Range": f"bytes */{layer.size}"} if content_range else {}
    fault_proxy.fail(layer.digest, 416, headers=headers)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.read(layer.digest) == layer.blob

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert [(g.range, g.status) for g in gets] == [(f"bytes={layer.size // 2}-", 416), (None, 200)]


def test_range_ignored_200_whole_body(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    _plant_ingest(tmp_path, layer.digest, layer.blob[: layer.size // 2])
    fault_proxy.rewrite_range(layer.digest, None)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.read(layer.digest) == layer.blob

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert [g.status for g in gets] == [200]


@pytest.mark.parametrize("where", ["earlier", "later"])
def test_206_at_another_offset_is_not_appended(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy, where: str
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    half = layer.size // 2
    _plant_ingest(tmp_path, layer.digest, layer.blob[:half])
    other = layer.size // 4 if where == "earlier" else layer.size - 10
    fault_proxy.rewrite_range(layer.digest, f"bytes={other}-")

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.read(layer.digest) == layer.blob

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert gets[0].range == f"bytes={half}-" and gets[0].status == 206


def test_resume_mid_body_with_range_ignored(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    """The body breaks off; the resume's Range is ignored: the rest is taken from a 200."""
    img = test_images.busybox
    layer = img.layers[0]
    fault_proxy.cut_after(layer.digest, layer.size // 3)
    fault_proxy.rewrite_range(layer.digest, None)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest
        assert svc.content.read(layer.digest) == layer.blob

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert [g.status for g in gets] == [200, 200]


def _push_with_declared_size(registry: Registry, repo: str, extra: int) -> tuple[Layer, int]:
    """An image whose manifest declares its layer `extra` bytes longer than the blob is."""
    layer = LayerBuilder().file("sized", secrets.token_bytes(128 << 10)).build()
    registry.push_blob(repo, layer.blob)
    config = canonical_json(image_config([layer]))
    registry.push_blob(repo, config)
    declared = layer.size + extra
    manifest = build_manifest(config, [dataclasses.replace(layer, size=declared)])
    registry.push_manifest(repo, "latest", manifest, MEDIA_TYPES["oci"].manifest)
    return layer, declared


@pytest.mark.parametrize("extra", [100_000, -1000], ids=["shorter", "longer"])
def test_layer_size_differs_from_the_manifest(
    tmp_path: Path, registry: Registry, fault_proxy: FaultProxy, extra: int
) -> None:
    repo = f"crispy-test/size-{'short' if extra > 0 else 'long'}"
    layer, declared = _push_with_declared_size(registry, repo, extra)
    ref = fault_proxy.reference(repo, "latest")

    async def body(svc: ImageService) -> None:
        for _ in range(2):  # the same clear error again, not a wedged ingest
            with pytest.raises(errors.InvalidArgument) as e:
                await svc.pull(ref)
            msg = str(e.value)
            assert layer.digest in msg and str(declared) in msg and str(layer.size) in msg, msg
            assert not os.path.exists(_ingest_file(tmp_path / "root", layer.digest))
            assert svc.store.list_images() == []

    run(tmp_path, body)


def test_layer_size_differs_over_cri(
    daemon_dir: Path, registry: Registry, fault_proxy: FaultProxy
) -> None:
    repo = "crispy-test/size-short-cri"
    layer, declared = _push_with_declared_size(registry, repo, 50_000)
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            req = pb.PullImageRequest(
                image=pb.ImageSpec(image=fault_proxy.reference(repo, "latest"))
            )
            with pytest.raises(grpc.RpcError) as e:
                c.image.PullImage(req, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            details = e.value.details() or ""
            assert layer.digest in details and str(declared) in details, details
    finally:
        d.stop()
