"""Image import and export: OCI layout and docker save tars, via the daemon and in process."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.images import manifest as mf
from crispy.images.archive import export_archive, import_archive
from crispy.images.service import ImageService
from support.daemon import Crispyd, crispy_bin
from support.images import (
    LayerBuilder,
    PushedImage,
    build_manifest,
    busybox_layer,
    canonical_json,
    host_platform,
    image_config,
)
from support.imagesvc import check_expectation, mounted_rootfs, run
from support.registry import sha256_digest
from support.registry_fixtures import TestImages

NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def crispy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [crispy_bin("crispy"), *args], capture_output=True, text=True, timeout=120
    )


# -- building archives -----------------------------------------------------------------------


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _add(self, name: str, kind: bytes, data: bytes = b"", link: str = "") -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data)
        info.linkname = link
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        self.tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        return self

    def file(self, name: str, data: bytes) -> TarBuilder:
        return self._add(name, tarfile.REGTYPE, data)

    def dir(self, name: str) -> TarBuilder:
        return self._add(name, tarfile.DIRTYPE)

    def symlink(self, name: str, target: str) -> TarBuilder:
        return self._add(name, tarfile.SYMTYPE, link=target)

    def fifo(self, name: str) -> TarBuilder:
        return self._add(name, tarfile.FIFOTYPE)

    def data(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()

    def write(self, path: Path, compress: bool = False) -> Path:
        data = self.data()
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        return path


def image_blobs(img: PushedImage) -> dict[str, bytes]:
    blobs = {img.digest: img.manifest, img.config_digest: img.config_bytes}
    blobs.update({layer.digest: layer.blob for layer in img.layers})
    return blobs


def entry(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def oci_layout(entries: list[dict[str, Any]], blobs: dict[str, bytes]) -> TarBuilder:
    t = TarBuilder().file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    t.dir("blobs").dir("blobs/sha256")
    for digest, data in blobs.items():
        t.file(f"blobs/sha256/{digest[7:]}", data)
    # index.json last: the importer must not rely on reading it first.
    index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": entries}
    return t.file("index.json", json.dumps(index).encode())


def docker_save(
    images: list[tuple[PushedImage, list[str] | None]],
    repositories: dict[str, dict[str, str]] | None = None,
) -> tuple[TarBuilder, list[dict[str, Any]]]:
    """A classic `docker save` archive: a layer two images share is written once and
    linked, manifest.json comes last."""
    t = TarBuilder()
    saved: dict[str, str] = {}  # diff ID -> path
    manifest = []
    for img, tags in images:
        t.file(f"{img.config_digest[7:]}.json", img.config_bytes)
        paths = []
        for i, layer in enumerate(img.layers):
            layer_id = hashlib.sha256(f"{img.config_digest} {i}".encode()).hexdigest()
            path = f"{layer_id}/layer.tar"
            t.dir(layer_id).file(f"{layer_id}/VERSION", b"1.0")
            t.file(f"{layer_id}/json", json.dumps({"id": layer_id}).encode())
            if layer.diff_id in saved:
                t.symlink(path, f"../{saved[layer.diff_id]}")
            else:
                t.file(path, layer.tar)
                saved[layer.diff_id] = path
            paths.append(path)
        manifest.append(
            {"Config": f"{img.config_digest[7:]}.json", "RepoTags": tags, "Layers": paths}
        )
    if repositories is not None:
        t.file("repositories", json.dumps(repositories).encode())
    t.file("manifest.json", json.dumps(manifest).encode())
    return t, manifest


# -- (a) export and import through the daemon -------------------------------------------------


def pull(cri: CriClient, ref: str) -> str:
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    return str(cri.image.PullImage(req, timeout=60).image_ref)


def status(cri: CriClient, ref: str) -> pb.ImageStatusResponse:
    return cri.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10)


def check_layout(path: Path, images: list[PushedImage]) -> None:
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert json.loads(tar.extractfile("oci-layout").read()) == {  # type: ignore[union-attr]
            "imageLayoutVersion": "1.0.0"
        }
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        blobs = [n for n in members if n.startswith("blobs/sha256/")]
        assert len(blobs) == len(set(blobs))
        for name in blobs:
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert sha256_digest(data) == "sha256:" + name.rsplit("/", 1)[1]
    want: set[str] = set()
    for img in images:
        want |= set(image_blobs(img))
    assert {"sha256:" + n.rsplit("/", 1)[1] for n in blobs} == want
    plat = host_platform()
    assert index["mediaType"] == mf.OCI_INDEX
    assert [
        (m["digest"], m["size"], m["mediaType"], m["annotations"], m["platform"]["architecture"])
        for m in index["manifests"]
    ] == [
        (
            img.digest,
            len(img.manifest),
            img.media_type,
            {NAME: img.reference, REF_NAME: img.tag},
            plat.architecture,
        )
        for img in images
    ]


def test_export_remove_import_round_trip(
    cri: CriClient, crispyd: Crispyd, test_images: TestImages, tmp_path: Path
) -> None:
    images = [test_images.busybox, test_images.layers]
    for img in images:
        assert pull(cri, img.reference) == img.config_digest
    tar = tmp_path / "images.tar"
    r = crispy("-r", crispyd.endpoint, "export", *(i.reference for i in images), "-o", str(tar))
    assert r.returncode == 0, r.stderr
    check_layout(tar, images)

    for img in images:
        cri.image.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=img.config_digest)), timeout=30
        )
        assert not status(cri, img.reference).HasField("image")

    r = crispy("-r", crispyd.endpoint, "import", str(tar))
    assert r.returncode == 0, r.stderr
    for img in images:
        assert f"{img.config_digest}  {img.reference}" in r.stdout
        s = status(cri, img.reference).image
        assert s.id == img.config_digest
        assert list(s.repo_tags) == [img.reference]
        assert list(s.repo_digests) == [img.digest_reference]
        assert s.size == img.size


def test_export_file_as_last_argument_and_errors(
    cri: CriClient, crispyd: Crispyd, test_images: TestImages, tmp_path: Path
) -> None:
    img = test_images.busybox
    pull(cri, img.reference)
    tar = tmp_path / "one.tar"
    r = crispy("-r", crispyd.endpoint, "export", img.reference, str(tar))
    assert r.returncode == 0, r.stderr
    check_layout(tar, [img])
    assert not [p for p in os.listdir(tmp_path) if p != "one.tar"]  # no temp file left

    r = crispy("-r", crispyd.endpoint, "export", "example.com/no/such:image", "-o", str(tar))
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    r = crispy("-r", crispyd.endpoint, "import", str(tmp_path / "missing.tar"))
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    # The daemon's working directory is not the caller's: relative paths are refused.
    call = cri._channel.unary_unary(
        "/crispy.v1.Images/Import",
        request_serializer=lambda d: json.dumps(d).encode(),
        response_deserializer=json.loads,
    )
    with pytest.raises(grpc.RpcError) as e:
        call({"path": "one.tar"}, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_runtime_without_the_extension(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    sock = tmp_path / "other.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        r = crispy("-r", f"unix://{sock}", "import", str(tmp_path / "x.tar"))
        assert r.returncode == 1
        assert "does not support image import; crispy's own daemon does" in r.stderr
        r = crispy("-r", f"unix://{sock}", "export", "busybox", "-o", str(tmp_path / "x.tar"))
        assert "does not support image export" in r.stderr
    finally:
        server.stop(None)


def test_export_keeps_the_index_of_a_multiarch_image(
    tmp_path: Path, test_images: TestImages
) -> None:
    index = test_images.multiarch
    here = index.for_platform(host_platform().architecture)
    tar = tmp_path / "multi.tar"

    async def body(svc: ImageService) -> None:
        pulled = await svc.pull(index.reference)
        await export_archive(svc, [index.reference], str(tar))
        with tarfile.open(tar) as t:
            doc = json.loads(t.extractfile("index.json").read())  # type: ignore[union-attr]
        assert [m["digest"] for m in doc["manifests"]] == [index.digest]
        await svc.remove(pulled.id)
        assert svc.status(index.reference) is None
        [imported] = await import_archive(svc, str(tar))
        assert imported.id == here.config_digest
        assert imported.repo_tags == [index.reference]
        assert imported.repo_digests == [index.digest_reference]  # the index's, as pulled

    run(tmp_path, body)


# -- (b) docker save archives ------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_docker_save_import(tmp_path: Path, test_images: TestImages, compress: bool) -> None:
    layers, busybox = test_images.layers, test_images.busybox
    t, manifest = docker_save([(layers, ["crispy-test/saved:1"]), (busybox, None)], None)
    # busybox has no RepoTags; the legacy `repositories` file names its top layer.
    top = manifest[1]["Layers"][-1].split("/")[0]
    t.file("repositories", json.dumps({"crispy-test/legacy": {"v1": top}}).encode())
    tar = t.write(tmp_path / "saved.tar", compress)

    async def body(svc: ImageService) -> None:
        imported = await import_archive(svc, str(tar))
        assert [i.id for i in imported] == [layers.config_digest, busybox.config_digest]
        img = svc.status("docker.io/crispy-test/saved:1")
        assert img is not None and img.id == layers.config_digest
        assert img.repo_tags == ["docker.io/crispy-test/saved:1"]
        assert img.row.manifest_media_type == mf.DOCKER_MANIFEST
        assert img.repo_digests == [f"docker.io/crispy-test/saved@{img.row.manifest_digest}"]
        # the manifest we wrote, the config and the uncompressed layers are all stored
        for digest in (img.row.manifest_digest, layers.config_digest, *layers.diff_ids):
            assert svc.content.exists(digest)
        legacy = svc.status("crispy-test/legacy:v1")
        assert legacy is not None and legacy.id == busybox.config_digest
        assert layers.expect is not None
        with mounted_rootfs(svc, img.id, tmp_path / "rootfs") as rootfs:
            check_expectation(rootfs, layers.expect)
        # importing again changes nothing and needs nothing new
        again = await import_archive(svc, str(tar))
        assert [i.id for i in again] == [layers.config_digest, busybox.config_digest]

    run(tmp_path, body)


def test_unnamed_image_and_name_given(tmp_path: Path, test_images: TestImages) -> None:
    img = test_images.busybox
    tar = docker_save([(img, None)])[0].write(tmp_path / "unnamed.tar")

    async def body(svc: ImageService) -> None:
        [imported] = await import_archive(svc, str(tar))
        assert imported.repo_tags == [] and imported.repo_digests == []
        found = svc.status(img.config_digest)
        assert found is not None and found.id == img.config_digest
        [named] = await import_archive(svc, str(tar), name="example.com/renamed:2")
        assert named.id == img.config_digest
        assert named.repo_tags == ["example.com/renamed:2"]

    run(tmp_path, body)


# -- (c) OCI image layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_oci_layout_import(tmp_path: Path, test_images: TestImages, compress: bool) -> None:
    img, index = test_images.layers, test_images.multiarch
    here = index.for_platform(host_platform().architecture)
    blobs = {**image_blobs(img), index.digest: index.manifest, **image_blobs(here)}
    entries = [
        entry(img.media_type, img.digest, len(img.manifest), **{REF_NAME: "example.com/oci/x:v1"}),
        # a bare tag names no repository: this entry adds no name
        entry(img.media_type, img.digest, len(img.manifest), **{REF_NAME: "latest"}),
        entry(
            index.media_type,
            index.digest,
            len(index.manifest),
            **{NAME: "example.com/oci/multi:2", REF_NAME: "2"},
        ),
    ]
    tar = oci_layout(entries, blobs).write(tmp_path / "oci.tar", compress)

    async def body(svc: ImageService) -> None:
        imported = await import_archive(svc, str(tar))
        assert [i.id for i in imported] == [img.config_digest, here.config_digest]
        assert imported[0].repo_tags == ["example.com/oci/x:v1"]
        assert imported[0].repo_digests == [f"example.com/oci/x@{img.digest}"]
        assert imported[1].repo_tags == ["example.com/oci/multi:2"]
        assert imported[1].repo_digests == [f"example.com/oci/multi@{index.digest}"]
        assert img.expect is not None
        with mounted_rootfs(svc, img.config_digest, tmp_path / "rootfs") as rootfs:
            check_expectation(rootfs, img.expect)

    run(tmp_path, body)


def test_newer_docker_save_falls_back_to_manifest_json(
    tmp_path: Path, test_images: TestImages
) -> None:
    """Docker 25+ writes both formats; its index.json may name blobs it did not save."""
    img = test_images.config
    blobs = image_blobs(img)
    del blobs[img.digest]  # the OCI side is unusable: only manifest.json can name the image
    manifest = [
        {
            "Config": f"blobs/sha256/{img.config_digest[7:]}",
            "RepoTags": ["crispy-test/new:1"],
            "Layers": [f"blobs/sha256/{x.digest[7:]}" for x in img.layers],
        }
    ]
    t = oci_layout([entry(img.media_type, img.digest, len(img.manifest))], blobs)
    tar = t.file("manifest.json", json.dumps(manifest).encode()).write(tmp_path / "new.tar")

    async def body(svc: ImageService) -> None:
        [imported] = await import_archive(svc, str(tar))
        assert imported.id == img.config_digest
        assert imported.repo_tags == ["docker.io/crispy-test/new:1"]
        # the layers stay compressed, under their own digests
        assert [x["digest"] for x in imported.row.layers] == img.layer_digests
        assert {x["mediaType"] for x in imported.row.layers} == {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        }
        assert img.expect is not None
        with mounted_rootfs(svc, img.config_digest, tmp_path / "rootfs") as rootfs:
            check_expectation(rootfs, img.expect)

    run(tmp_path, body)


# -- (d) hostile archives -----------------------------------------------------------------------


def broken_image(layers: list[Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An OCI image whose config lists its layers' diff IDs in the wrong order."""
    config = image_config(layers)
    config["rootfs"]["diff_ids"].reverse()
    config_bytes = canonical_json(config)
    manifest = build_manifest(config_bytes, layers)
    blobs = {sha256_digest(manifest): manifest, sha256_digest(config_bytes): config_bytes}
    blobs.update({x.digest: x.blob for x in layers})
    return entry(mf.OCI_MANIFEST, sha256_digest(manifest), len(manifest)), blobs


def hostile(case: str, images: TestImages) -> bytes:
    if case == "not-a-tar":
        return b"this is not a tar archive" * 100
    return hostile_tar(case, images).data()


def hostile_tar(case: str, images: TestImages) -> TarBuilder:
    img = images.layers
    blobs = image_blobs(img)
    good = [entry(img.media_type, img.digest, len(img.manifest), **{NAME: "example.com/h:1"})]
    last = img.layers[-1]
    if case == "dotdot-layer-path":
        t, manifest = docker_save([(img, ["h:1"])])
        manifest[0]["Layers"][-1] = "../../etc/passwd"
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "absolute-config-path":
        t, manifest = docker_save([(img, ["h:1"])])
        manifest[0]["Config"] = "/etc/passwd"
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "symlink-out-of-archive":
        t, manifest = docker_save([(img, ["h:1"])])
        t.symlink("evil/layer.tar", "../../../etc/passwd")
        manifest[0]["Layers"][-1] = "evil/layer.tar"
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "layer-count":
        t, manifest = docker_save([(img, ["h:1"])])
        manifest[0]["Layers"].pop()
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "docker-layer-not-its-diff-id":
        t, manifest = docker_save([(img, ["h:1"])])
        t.file("evil/layer.tar", LayerBuilder().file("x", "x").build().tar)
        manifest[0]["Layers"][-1] = "evil/layer.tar"
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "docker-config-not-its-name":
        t, manifest = docker_save([(img, ["h:1"])])
        other = images.busybox.config_bytes
        t.file("evil.json", other)
        t.file(manifest[0]["Config"], other)  # a later duplicate wins, as on extraction
        return t.file("manifest.json", json.dumps(manifest).encode())
    if case == "corrupt-blob":
        # same size, different bytes; written after the blobs that are fine
        blobs[last.digest] = bytes(b ^ 0xFF for b in last.blob)
        return oci_layout(good, blobs)
    if case == "missing-blob":
        del blobs[last.digest]
        return oci_layout(good, blobs)
    if case == "blob-is-a-fifo":
        del blobs[last.digest]
        return oci_layout(good, blobs).fifo(f"blobs/sha256/{last.digest[7:]}")
    if case == "wrong-diff-ids-second-image":
        # the first image imports fine, the second fails to unpack: neither may stay
        bad, bad_blobs = broken_image([busybox_layer(), LayerBuilder().file("y", "y").build()])
        return oci_layout([*good, bad], {**blobs, **bad_blobs})
    raise AssertionError(case)


HOSTILE = {
    "dotdot-layer-path": "outside the archive",
    "absolute-config-path": "absolute path",
    "symlink-out-of-archive": "links outside the archive",
    "layer-count": "diff_ids for 2 layers",
    "docker-layer-not-its-diff-id": "arrived with digest",
    "docker-config-not-its-name": "has digest",
    "corrupt-blob": "arrived with digest",
    "missing-blob": "is not in the archive",
    "blob-is-a-fifo": "is a fifo, not a regular file",
    "wrong-diff-ids-second-image": "unpacks to diff ID",
    "not-a-tar": "not a readable tar archive",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(
    tmp_path: Path, test_images: TestImages, case: str
) -> None:
    tar = tmp_path / "hostile.tar"
    tar.write_bytes(hostile(case, test_images))

    async def body(svc: ImageService) -> None:
        with pytest.raises(errors.InvalidArgument, match=HOSTILE[case]):
            await import_archive(svc, str(tar))
        svc.gc()
        assert list(svc.content.list()) == []
        assert svc.store.list_images() == []
        assert svc.store.list_snapshots() == []
        assert os.listdir(svc.content.ingests) == []

    run(tmp_path, body)
