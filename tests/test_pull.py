"""Pulling the fixture images into an in-process image service: content, layers, rootfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from crispy.images.service import ImageService
from support.images import (
    OCI_CONFIG,
    OCI_MANIFEST,
    LayerBuilder,
    PushedImage,
    busybox_layer,
    canonical_json,
    host_platform,
)
from support.imagesvc import check_expectation, mounted_rootfs, run
from support.registry import Registry, sha256_digest
from support.registry_fixtures import TestImages


def _check_image(svc: ImageService, img: PushedImage, pulled_id: str) -> None:
    assert pulled_id == img.config_digest
    status = svc.status(img.reference)
    assert status is not None
    assert status.id == img.config_digest
    assert status.size == img.size
    assert f"{img.registry}/{img.repo}:{img.tag}" in status.repo_tags
    assert f"{img.registry}/{img.repo}@{img.digest}" in status.repo_digests
    for digest in (*img.layer_digests, img.config_digest, img.digest):
        assert svc.content.exists(digest)


@pytest.mark.parametrize("name", ["busybox", "layers", "config", "docker"])
@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_pull_and_mount(
    tmp_path: Path, test_images: TestImages, name: str, snapshotter: str
) -> None:
    img: PushedImage = getattr(test_images, name)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(img.reference)
        _check_image(svc, img, pulled.id)
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "bin" / "busybox").stat().st_size > 100_000
            assert os.access(rootfs / "bin" / "sh", os.X_OK)
            if img.expect is not None:
                check_expectation(rootfs, img.expect)

    run(tmp_path, body, snapshotter=snapshotter)


def test_config_image_fields(tmp_path: Path, test_images: TestImages) -> None:
    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(test_images.config.reference)
        assert pulled.username == "crispy" and pulled.uid is None
        assert pulled.row.config["config"]["WorkingDir"] == "/work"
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            st = (rootfs / "home" / "crispy").stat()
            assert (st.st_uid, st.st_gid) == (1234, 5678)

    run(tmp_path, body)


@pytest.mark.parametrize("name", ["multiarch", "multiarch_docker"])
def test_index_resolves_to_this_platform(
    tmp_path: Path, test_images: TestImages, name: str
) -> None:
    index = getattr(test_images, name)
    here = index.for_platform(host_platform().architecture)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(index.reference)
        assert pulled.id == here.config_digest
        # the repo digest is the index's, as kubelet and containerd report it
        assert f"{index.registry}/{index.repo}@{index.digest}" in pulled.repo_digests
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "arch").read_text().strip() == host_platform().architecture
        # the other platform's layer was never fetched
        other = next(i for i in index.images if i is not here)
        for digest in other.layer_digests:
            assert not svc.content.exists(digest)

    run(tmp_path, body)


def test_shared_layers_stored_once_and_second_pull_fetches_nothing(
    tmp_path: Path, test_images: TestImages
) -> None:
    async def body(svc: ImageService) -> None:
        await svc.pull(test_images.busybox.reference)
        first = svc.puller.bytes_downloaded
        assert first >= test_images.busybox.layers[0].size
        await svc.pull(test_images.layers.reference)
        # layers shares busybox's base layer: only its two own layers came down
        own = sum(x.size for x in test_images.layers.layers[1:])
        assert svc.puller.bytes_downloaded - first == own
        base_chain = test_images.busybox.diff_ids[0]
        rows = [r for r in svc.store.list_snapshots() if r.key == base_chain]
        assert len(rows) == 1
        before = svc.puller.bytes_downloaded
        again = await svc.pull(test_images.layers.reference)
        assert again.id == test_images.layers.config_digest
        assert svc.puller.bytes_downloaded == before
        # the same image under a second tag: nothing more either
        tagged = await svc.pull(test_images.busybox_tag2.reference)
        assert svc.puller.bytes_downloaded == before
        assert set(tagged.repo_tags) == {
            test_images.busybox.reference,
            test_images.busybox_tag2.reference,
        }

    run(tmp_path, body)


def test_pull_by_digest(tmp_path: Path, test_images: TestImages) -> None:
    img = test_images.busybox

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(img.digest_reference)
        assert pulled.id == img.config_digest
        assert pulled.repo_tags == []
        assert pulled.repo_digests == [img.digest_reference]

    run(tmp_path, body)


def test_zstd_and_uncompressed_layers(tmp_path: Path, registry: Registry) -> None:
    base = busybox_layer()
    ztar = LayerBuilder().dir("z").file("z/file", "zstd\n").tar()
    plain = LayerBuilder().dir("u").file("u/file", "plain\n").tar()
    zblob = zstandard.ZstdCompressor().compress(ztar)
    blobs = [
        (base.blob, "application/vnd.oci.image.layer.v1.tar+gzip", base.tar),
        (zblob, "application/vnd.oci.image.layer.v1.tar+zstd", ztar),
        (plain, "application/vnd.oci.image.layer.v1.tar", plain),
    ]
    repo = "crispy-test/compressions"
    config = canonical_json(
        {
            "architecture": host_platform().architecture,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for _, _, t in blobs]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": registry.push_blob(repo, config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": mt, "digest": registry.push_blob(repo, b), "size": len(b)}
                for b, mt, _ in blobs
            ],
        }
    )
    registry.push_manifest(repo, "latest", manifest, OCI_MANIFEST)

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(f"{registry.host}/{repo}:latest")
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "z" / "file").read_text() == "zstd\n"
            assert (rootfs / "u" / "file").read_text() == "plain\n"
            assert (rootfs / "bin" / "busybox").exists()

    run(tmp_path, body)
