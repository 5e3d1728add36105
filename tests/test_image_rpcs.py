"""The ImageService RPCs over crispyd's real socket, as kubelet and crictl call them."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd, default_config
from support.registry_fixtures import TestImages


def pull(cri: CriClient, ref: str, **auth: str) -> str:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if auth:
        req.auth.CopyFrom(pb.AuthConfig(**auth))
    return str(cri.image.PullImage(req, timeout=60).image_ref)


def status(cri: CriClient, ref: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return cri.image.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=verbose), timeout=10
    )


def remove(cri: CriClient, ref: str) -> None:
    cri.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=30)


def listed(cri: CriClient, ref: str = "") -> list[pb.Image]:
    req = pb.ListImagesRequest()
    if ref:
        req.filter.image.image = ref
    return list(cri.image.ListImages(req, timeout=10).images)


def test_pull_status_list_remove(cri: CriClient, test_images: TestImages) -> None:
    img = test_images.config
    image_ref = pull(cri, img.reference)
    assert image_ref == img.config_digest
    s = status(cri, img.reference).image
    assert s.id == img.config_digest
    assert list(s.repo_tags) == [img.reference]
    assert list(s.repo_digests) == [img.digest_reference]
    assert s.size == img.size
    assert s.username == "crispy" and not s.HasField("uid")
    assert s.spec.image == img.config_digest
    assert not s.pinned
    # the same image by ID, by short ID and by repo digest
    for ref in (
        img.config_digest,
        img.config_digest[7:],
        img.config_digest[7:19],
        img.digest_reference,
    ):
        assert status(cri, ref).image.id == img.config_digest, ref
    assert [i.id for i in listed(cri, img.reference)] == [img.config_digest]
    assert img.config_digest in {i.id for i in listed(cri)}
    remove(cri, img.reference)
    assert not status(cri, img.reference).HasField("image")
    assert listed(cri, img.reference) == []


def test_status_verbose_has_config_and_manifest(cri: CriClient, test_images: TestImages) -> None:
    img = test_images.busybox
    pull(cri, img.reference)
    info = json.loads(status(cri, img.reference, verbose=True).info["info"])
    assert info["imageSpec"]["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert info["manifestDigest"] == img.digest
    assert [x["digest"] for x in info["manifest"]["layers"]] == list(img.layer_digests)
    assert info["chainID"]


def test_numeric_user(cri: CriClient, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from support.images import busybox_layer, image_config, push_image

    layers = [busybox_layer()]
    img = push_image(
        registry,
        "crispy-test/numeric-user",
        "latest",
        layers,
        image_config(layers, user="1000:1000", cmd=["sh"]),
    )
    pull(cri, img.reference)
    s = status(cri, img.reference).image
    assert s.uid.value == 1000 and s.username == ""


def test_unknown_image_is_empty_not_an_error(cri: CriClient) -> None:
    r = status(cri, "127.0.0.1:1/never/pulled:latest")
    assert not r.HasField("image")
    remove(cri, "127.0.0.1:1/never/pulled:latest")  # OK, nothing to do
    remove(cri, "sha256:" + "0" * 64)


@pytest.mark.parametrize("ref", ["Busybox", "foo@sha256:abc", "a//b", "foo:"])
def test_bad_reference_is_invalid_argument(cri: CriClient, ref: str) -> None:
    for call in (lambda: pull(cri, ref), lambda: status(cri, ref)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ref in e.value.details()


def test_removing_one_of_two_tags_only_untags(cri: CriClient, test_images: TestImages) -> None:
    a, b = test_images.busybox, test_images.busybox_tag2
    pull(cri, a.reference)
    pull(cri, b.reference)
    s = status(cri, a.reference).image
    assert set(s.repo_tags) == {a.reference, b.reference}
    remove(cri, b.reference)
    s = status(cri, a.reference).image
    assert list(s.repo_tags) == [a.reference]
    assert not status(cri, b.reference).HasField("image")
    remove(cri, a.config_digest)  # by ID: the whole image
    assert not status(cri, a.reference).HasField("image")


def test_image_fs_info(cri: CriClient, crispyd: Crispyd, test_images: TestImages) -> None:
    pull(cri, test_images.layers.reference)
    r = cri.image.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10)
    fs = r.image_filesystems[0]
    assert fs.fs_id.mountpoint == str(crispyd.root / "snapshots")
    assert fs.used_bytes.value > sum(x.size for x in test_images.layers.layers)
    # busybox applets are hardlinks of one inode; dirs, busybox, passwd, blobs and friends
    assert fs.inodes_used.value > 30
    assert fs.timestamp > 0


def test_registry_down_is_a_clear_error(cri: CriClient) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(grpc.RpcError) as e:
        pull(cri, f"127.0.0.1:{port}/crispy-test/busybox:latest")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}" in e.value.details()


def test_unknown_tag_is_not_found(cri: CriClient, test_images: TestImages) -> None:
    ref = f"{test_images.busybox.registry}/crispy-test/busybox:nosuchtag"
    with pytest.raises(grpc.RpcError) as e:
        pull(cri, ref)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nosuchtag" in e.value.details()


def test_sandbox_image_is_pinned(daemon_dir: Path, test_images: TestImages) -> None:
    ref = test_images.busybox_tag2.reference
    d = Crispyd(daemon_dir, config=f'sandbox_image = "{ref}"\n' + default_config(daemon_dir))
    d.start()
    try:
        with d.client() as c:
            pull(c, ref)
            assert status(c, ref).image.pinned
    finally:
        d.stop()
