"""RemoveImage + garbage collection: frees what only that image used, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispy import errors
from crispy.images.service import ImageService
from support.hostile import TarBuilder
from support.images import Layer, busybox_layer, image_config, push_image
from support.imagesvc import mounted_rootfs, run
from support.registry import Registry
from support.registry_fixtures import TestImages


def _blobs(svc: ImageService) -> set[str]:
    return set(svc.content.list())


def _snapshot_keys(svc: ImageService) -> set[str]:
    return {s.key for s in svc.store.list_snapshots()}


def _snapshot_dirs(svc: ImageService) -> set[str]:
    return {p.name for p in Path(svc.snapshotter.root).iterdir() if p.name.isdigit()}


def test_remove_frees_only_that_images_blobs_and_snapshots(
    tmp_path: Path, test_images: TestImages
) -> None:
    busybox, layers = test_images.busybox, test_images.layers

    async def body(svc: ImageService) -> None:
        await svc.pull(busybox.reference)
        await svc.pull(layers.reference)
        own = set(layers.layer_digests[1:]) | {layers.digest, layers.config_digest}
        assert own <= _blobs(svc)
        assert len(_snapshot_keys(svc)) == 3  # the shared base + layers' two own
        await svc.remove(layers.reference)
        assert not own & _blobs(svc)
        assert _blobs(svc) == {busybox.digest, busybox.config_digest, *busybox.layer_digests}
        assert _snapshot_keys(svc) == {busybox.diff_ids[0]}
        assert len(_snapshot_dirs(svc)) == 1
        # busybox is whole and still runs from its snapshot
        with mounted_rootfs(svc, busybox.config_digest, tmp_path / "rootfs") as rootfs:
            assert (rootfs / "bin" / "busybox").exists()
        await svc.remove(busybox.config_digest)
        assert _blobs(svc) == set()
        assert _snapshot_keys(svc) == set() and _snapshot_dirs(svc) == set()

    run(tmp_path, body)


def test_removing_an_image_in_use_keeps_the_containers_rootfs(
    tmp_path: Path, test_images: TestImages
) -> None:
    img = test_images.layers

    async def body(svc: ImageService) -> None:
        await svc.pull(img.reference)
        target = tmp_path / "rootfs"
        target.mkdir()
        svc.prepare_rootfs("container-1", img.config_digest)
        svc.mount_rootfs("container-1", str(target))
        try:
            await svc.remove(img.reference)
            assert svc.status(img.reference) is None
            # the container's lower layers survive the image's removal
            assert (target / "replace" / "file").read_text() == "v2\n"
            (target / "new").write_text("still writable\n")
            assert len(_snapshot_keys(svc)) == 4  # 3 layers + the container's
        finally:
            svc.snapshotter.unmount(str(target))
        svc.remove_rootfs("container-1")
        assert _snapshot_keys(svc) == set() and _snapshot_dirs(svc) == set()

    run(tmp_path, body)


def test_crash_leftovers_are_cleaned_at_start(tmp_path: Path, test_images: TestImages) -> None:
    img = test_images.busybox

    async def pull(svc: ImageService) -> None:
        await svc.pull(img.reference)
        # What a crispyd killed mid-pull leaves: a half layer, a lease, a temp blob.
        lease = svc.store.create_lease()
        snap = svc.store.add_snapshot("sha256:" + "f" * 64, None, "preparing", "overlayfs", lease)
        svc.snapshotter.prepare_layer(snap.id, [])
        (Path(svc.content.blobs) / (".tmp-" + "e" * 64 + "-1")).write_bytes(b"partial")
        (Path(svc.snapshotter.root) / "999").mkdir()

    run(tmp_path, pull)

    async def check(svc: ImageService) -> None:  # a new service = a restarted crispyd
        assert _snapshot_keys(svc) == {img.diff_ids[0]}
        assert _snapshot_dirs(svc) == {str(svc.store.get_snapshot(img.diff_ids[0]).id)}
        assert not any(p.name.startswith(".tmp-") for p in Path(svc.content.blobs).iterdir())
        assert svc.status(img.reference) is not None

    run(tmp_path, check)


@pytest.mark.parametrize("kind", ["dotdot", "symlink-then-write", "hardlink-out"])
def test_hostile_layer_touches_nothing_outside(
    tmp_path: Path, registry: Registry, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("intact\n")
    t = TarBuilder()
    if kind == "dotdot":
        t.file("../../../../../../.." + str(outside / "victim"), b"pwned\n")
    elif kind == "symlink-then-write":
        t.symlink("escape", str(outside)).file("escape/victim", b"pwned\n")
    else:
        t.hardlink("link", str(outside / "victim")).file("link", b"pwned\n")
    evil = Layer.from_tar(t.tar())
    layers = [busybox_layer(), evil]
    img = push_image(
        registry,
        f"crispy-test/hostile-{kind}",
        "latest",
        layers,
        image_config(layers, cmd=["sh"]),
    )

    async def body(svc: ImageService) -> None:
        # Refused outright, or contained inside the layer: never written through.
        try:
            pulled = await svc.pull(img.reference)
        except errors.InvalidArgument as e:
            assert evil.digest in str(e)
            assert svc.store.list_images() == []
            return
        with mounted_rootfs(svc, pulled.id, tmp_path / "rootfs"):
            pass

    run(tmp_path, body)
    assert (outside / "victim").read_text() == "intact\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
