"""Pulls through a fault proxy: broken bodies, corrupt blobs, a dead registry, cancels."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from pathlib import Path

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.images.service import ImageService
from support.daemon import Crispyd
from support.faultproxy import FaultProxy
from support.images import LayerBuilder, image_config, push_image
from support.imagesvc import mounted_rootfs, run
from support.registry import Registry
from support.registry_fixtures import TestImages


def _ingests(svc: ImageService) -> list[str]:
    return os.listdir(svc.content.ingests)


def test_body_cut_mid_stream_resumes(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.busybox
    layer = img.layers[0]
    fault_proxy.cut_after(layer.digest, layer.size // 3, times=2)
    ref = fault_proxy.reference(img.repo, "latest")

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(ref)
        assert pulled.id == img.config_digest
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()

    run(tmp_path, body)
    gets = fault_proxy.requests(layer.digest, "GET")
    assert len(gets) == 3
    assert gets[1].range and gets[2].range  # the retries resumed, not restarted
    assert fault_proxy.bytes_sent(layer.digest) == layer.size


def test_corrupt_blob_fails_cleanly_then_a_good_pull_works(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.layers
    bad = img.layers[1]
    fault_proxy.corrupt(bad.digest, times=1)
    ref = fault_proxy.reference(img.repo, "latest")

    async def body(svc: ImageService) -> None:
        with pytest.raises(errors.InvalidArgument) as e:
            await svc.pull(ref)
        assert bad.digest in str(e.value)
        assert not svc.content.exists(bad.digest)
        assert bad.digest[7:] not in _ingests(svc)  # no partial of bad bytes to resume from
        assert svc.store.list_images() == []
        assert svc.status(ref) is None
        pulled = await svc.pull(ref)  # the registry serves good bytes again
        assert pulled.id == img.config_digest
        assert svc.content.exists(bad.digest)

    run(tmp_path, body)


def test_registry_down_fails_fast(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    fault_proxy.down()
    ref = fault_proxy.reference(test_images.busybox.repo, "latest")

    async def body(svc: ImageService) -> None:
        start = time.monotonic()
        with pytest.raises(errors.Unavailable) as e:
            await svc.pull(ref)
        assert fault_proxy.host in str(e.value)
        assert time.monotonic() - start < 10
        assert svc.store.list_images() == []

    run(tmp_path, body)


def test_transient_503_is_retried(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.busybox
    fault_proxy.fail("/manifests/", 503, times=1)
    fault_proxy.fail(img.layers[0].digest, 502, times=1)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest

    run(tmp_path, body)


def test_concurrent_pulls_share_one_download(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.layers
    ref = fault_proxy.reference(img.repo, "latest")
    for layer in img.layers:
        fault_proxy.slow(layer.digest, 4_000_000)  # long enough for the pulls to overlap

    async def body(svc: ImageService) -> None:
        a, b, c = await asyncio.gather(svc.pull(ref), svc.pull(ref), svc.pull(ref))
        assert a.id == b.id == c.id == img.config_digest

    run(tmp_path, body)
    for layer in img.layers:
        assert len(fault_proxy.requests(layer.digest, "GET")) == 1
        assert fault_proxy.bytes_sent(layer.digest) == layer.size


def test_cancelled_pull_resumes_with_range(
    daemon_dir: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    """A client deadline cancels the pull; the retry fetches only the missing bytes."""
    img = test_images.busybox
    layer = img.layers[0]
    ref = fault_proxy.reference(img.repo, "latest")
    fault_proxy.slow(layer.digest, layer.size / 4)  # ~4 s for the whole layer
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
            with pytest.raises(grpc.RpcError) as e:
                c.image.PullImage(req, timeout=1.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.3)  # let crispyd see the cancel and flush the partial blob
            partial = fault_proxy.bytes_sent(layer.digest)
            assert 0 < partial < layer.size
            fault_proxy.clear_faults()
            assert c.image.PullImage(req, timeout=60).image_ref == img.config_digest
        gets = fault_proxy.requests(layer.digest, "GET")
        assert gets[-1].range == f"bytes={gets[-1].range.split('=')[1]}"
        resumed_at = int(gets[-1].range.split("=")[1].rstrip("-"))
        assert resumed_at > 0
        # The retry asked only for what was missing; what crossed the wire twice is only
        # what was in flight (socket buffers) at the moment of the cancel.
        refetched = fault_proxy.bytes_sent(layer.digest) - layer.size
        assert 0 <= refetched < 64 * 1024, refetched
        assert resumed_at >= partial - 64 * 1024
    finally:
        d.stop()


def test_cancel_then_daemon_restart_still_resumes(
    daemon_dir: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    img = test_images.config
    layer = img.layers[0]
    ref = fault_proxy.reference(img.repo, "latest")
    fault_proxy.slow(layer.digest, layer.size / 4)
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
            with pytest.raises(grpc.RpcError):
                c.image.PullImage(req, timeout=1.5)
        d.kill()  # crispyd dies with the partial blob on disk
        fault_proxy.clear_faults()
        d.start()
        with d.client() as c:
            assert c.image.PullImage(req, timeout=60).image_ref == img.config_digest
        assert fault_proxy.requests(layer.digest, "GET")[-1].range
        assert fault_proxy.bytes_sent(layer.digest) - layer.size < 64 * 1024
    finally:
        d.stop()


def test_pull_over_cri_maps_errors(
    cri: CriClient, registry: Registry, fault_proxy: FaultProxy
) -> None:
    # A layer no other test pulls, so the daemon can't have it already.
    layer = LayerBuilder().file("unique", secrets.token_bytes(4096)).build()
    img = push_image(
        registry, "crispy-test/corrupt-me", "latest", [layer], image_config([layer], cmd=["sh"])
    )
    fault_proxy.corrupt(layer.digest, times=1)
    req = pb.PullImageRequest(image=pb.ImageSpec(image=fault_proxy.reference(img.repo, "latest")))
    with pytest.raises(grpc.RpcError) as e:
        cri.image.PullImage(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert layer.digest in e.value.details()
    assert cri.image.PullImage(req, timeout=30).image_ref == img.config_digest


def test_mirror_first_then_upstream(
    tmp_path: Path, test_images: TestImages, fault_proxy: FaultProxy
) -> None:
    """hosts.toml: a dead mirror is skipped, a live one serves, upstream is the fallback."""
    img = test_images.busybox
    hosts = tmp_path / "certs.d"
    (hosts / fault_proxy.host).mkdir(parents=True)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    (hosts / fault_proxy.host / "hosts.toml").write_text(
        f'server = "http://{fault_proxy.host}"\n'
        f'[host."http://127.0.0.1:{dead_port}"]\n  capabilities = ["pull", "resolve"]\n'
        f'[host."http://{img.registry}"]\n  capabilities = ["pull", "resolve"]\n'
    )

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(fault_proxy.reference(img.repo, "latest"))
        assert pulled.id == img.config_digest

    run(tmp_path, body, hosts_dir=hosts)
    # the live mirror (the registry itself) served everything; upstream saw nothing
    assert fault_proxy.requests() == []
