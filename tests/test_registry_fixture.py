"""The registry fixture serves the test images over plain HTTP, as a pulling runtime sees them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import urllib.error
import urllib.request
from email.message import Message

import pytest

import support.registry as registry_mod
from support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    LayerBuilder,
    PushedImage,
    build_busybox_layer,
    busybox_applets,
    busybox_layer,
    go_platform,
    host_platform,
)
from support.registry import Registry, append_digest
from support.registry_fixtures import TestImages

# Never let an http_proxy variable route loopback traffic elsewhere.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

IMAGE_NAMES = ["busybox", "busybox_tag2", "layers", "config", "docker"]


def http_get(url: str, accept: str | None = None) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _opener.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get_manifest(registry: Registry, repo: str, ref: str, accept: str) -> tuple[Message, bytes]:
    status, headers, body = http_get(f"{registry.url}/v2/{repo}/manifests/{ref}", accept)
    assert status == 200, body
    return headers, body


def get_blob(registry: Registry, repo: str, digest: str) -> bytes:
    status, _, body = http_get(f"{registry.url}/v2/{repo}/blobs/{digest}")
    assert status == 200
    assert sha256(body) == digest
    return body


def layer_tar(registry: Registry, image: PushedImage, index: int) -> tarfile.TarFile:
    blob = get_blob(registry, image.repo, image.layer_digests[index])
    tar = gzip.decompress(blob)
    assert sha256(tar) == image.diff_ids[index]
    return tarfile.open(fileobj=io.BytesIO(tar))


def test_v2_root(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    status, headers, _ = http_get(f"{registry.url}/v2/")
    assert status == 200
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_manifest_by_tag(registry: Registry, test_images: TestImages, name: str) -> None:
    image: PushedImage = getattr(test_images, name)
    assert image.reference == f"{registry.host}/{image.repo}:{image.tag}"
    headers, body = get_manifest(registry, image.repo, image.tag or "", image.media_type)
    assert headers["Content-Type"] == image.media_type
    assert sha256(body) == image.digest == headers["Docker-Content-Digest"]
    assert body == image.manifest
    manifest = json.loads(body)
    assert manifest["config"]["digest"] == image.config_digest == image.image_id
    assert [layer["digest"] for layer in manifest["layers"]] == image.layer_digests
    assert image.size == sum(d["size"] for d in manifest["layers"]) + manifest["config"]["size"]


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_config_blob(registry: Registry, test_images: TestImages, name: str) -> None:
    image: PushedImage = getattr(test_images, name)
    config = json.loads(get_blob(registry, image.repo, image.config_digest))
    assert config == image.config
    assert config["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert config["created"] == "2024-01-01T00:00:00Z"


def test_media_types(test_images: TestImages) -> None:
    for image, manifest, config, layer in (
        (test_images.busybox, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
        (test_images.docker, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
    ):
        parsed = json.loads(image.manifest)
        assert parsed["mediaType"] == image.media_type == manifest
        assert parsed["config"]["mediaType"] == config
        assert {d["mediaType"] for d in parsed["layers"]} == {layer}
    # Same layers and config in both flavours: only the manifest differs.
    assert test_images.docker.image_id == test_images.busybox.image_id
    assert test_images.docker.digest != test_images.busybox.digest


def test_busybox_layer(registry: Registry, test_images: TestImages) -> None:
    image = test_images.busybox
    assert image.config["config"]["Cmd"] == ["sh"]
    with layer_tar(registry, image, 0) as tf:
        members = {m.name: m for m in tf.getmembers()}
        busybox = members["bin/busybox"]
        assert busybox.isreg() and busybox.mode == 0o755
        data = tf.extractfile(busybox)
        assert data is not None
        with open("/bin/busybox", "rb") as f:
            assert data.read() == f.read()
    assert members["bin/sh"].islnk() and members["bin/sh"].linkname == "bin/busybox"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    links = {m.name for m in members.values() if m.islnk() and m.linkname == "bin/busybox"}
    assert links == {f"bin/{applet}" for applet in busybox_applets()}
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


def test_layers_image_whiteouts(registry: Registry, test_images: TestImages) -> None:
    image = test_images.layers
    assert len(image.layers) == 3
    with layer_tar(registry, image, 1) as tf:
        assert {"data/gone", "data/dir/inner", "opaque/old1", "replace/file"} <= set(tf.getnames())
    with layer_tar(registry, image, 2) as tf:
        names = set(tf.getnames())
        replaced = tf.extractfile("replace/file")
        assert replaced is not None and replaced.read() == b"v2\n"
    assert {"data/.wh.gone", "data/.wh.dir", "opaque/.wh..wh..opq", "opaque/new"} <= names
    expect = image.expect
    assert expect is not None
    assert expect.files["/replace/file"] == b"v2\n"
    assert {"/data/gone", "/data/dir/inner", "/opaque/old1"} <= set(expect.absent)


def test_config_image(registry: Registry, test_images: TestImages) -> None:
    image = test_images.config
    cfg = image.config["config"]
    assert cfg["User"] == "crispy"
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"] and cfg["Cmd"] == ["echo hello"]
    assert "CRISPY_TEST=1" in cfg["Env"] and cfg["WorkingDir"] == "/work"
    assert cfg["ExposedPorts"] == {"8080/tcp": {}} and cfg["Volumes"] == {"/data": {}}
    assert cfg["Labels"] == {"org.example.test": "config"} and cfg["StopSignal"] == "SIGUSR1"
    with layer_tar(registry, image, 1) as tf:
        home = tf.getmember("home/crispy")
        assert (home.uid, home.gid) == (1234, 5678)
        passwd = tf.extractfile("etc/passwd")
        group = tf.extractfile("etc/group")
        assert passwd is not None and group is not None
        assert b"crispy:x:1234:5678:crispy user:/home/crispy:/bin/sh\n" in passwd.read()
        assert b"extra:x:4321:crispy\n" in group.read()


def test_two_tags_same_image(registry: Registry, test_images: TestImages) -> None:
    one, two = test_images.busybox, test_images.busybox_tag2
    assert (one.repo, one.tag, two.tag) == ("crispy-test/busybox", "latest", "1.35")
    h1, _ = get_manifest(registry, one.repo, "latest", OCI_MANIFEST)
    h2, _ = get_manifest(registry, one.repo, "1.35", OCI_MANIFEST)
    assert h1["Docker-Content-Digest"] == h2["Docker-Content-Digest"] == one.digest == two.digest
    assert one.image_id == two.image_id


@pytest.mark.parametrize(
    ("name", "index_type", "child_type"),
    [("multiarch", OCI_INDEX, OCI_MANIFEST), ("multiarch_docker", DOCKER_LIST, DOCKER_MANIFEST)],
)
def test_index(
    registry: Registry, test_images: TestImages, name: str, index_type: str, child_type: str
) -> None:
    index = getattr(test_images, name)
    headers, body = get_manifest(registry, index.repo, "latest", index_type)
    assert headers["Content-Type"] == index_type == index.media_type
    assert sha256(body) == index.digest == headers["Docker-Content-Digest"]
    entries = json.loads(body)["manifests"]
    assert [e["digest"] for e in entries] == index.child_digests
    host = host_platform()
    assert entries[0]["platform"] == host.to_dict()  # host architecture first
    assert len({e["platform"]["architecture"] for e in entries}) == 2
    for entry, child in zip(entries, index.images, strict=True):
        assert entry["mediaType"] == child_type == child.media_type
        _, child_body = get_manifest(registry, index.repo, entry["digest"], child_type)
        assert sha256(child_body) == entry["digest"]
        config = json.loads(get_blob(registry, index.repo, child.config_digest))
        assert config["architecture"] == entry["platform"]["architecture"]
        with layer_tar(registry, child, -1) as tf:
            arch = tf.extractfile("arch")
            assert arch is not None
            assert arch.read().decode().strip() == entry["platform"]["architecture"]
    assert index.for_platform(host.architecture).digest == entries[0]["digest"]


def test_unknown_tag_is_404(registry: Registry, test_images: TestImages) -> None:
    status, _, body = http_get(
        f"{registry.url}/v2/{test_images.busybox.repo}/manifests/no-such-tag", OCI_MANIFEST
    )
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_push_blob_is_idempotent(registry: Registry) -> None:
    data = b"some blob\n"
    first = registry.push_blob("crispy-test/scratch", data)
    assert first == sha256(data)
    assert registry.push_blob("crispy-test/scratch", data) == first
    assert registry.get_blob("crispy-test/scratch", first) == data


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/v2/r/blobs/uploads/u", "/v2/r/blobs/uploads/u?digest=sha256%3Aab"),
        ("/v2/r/blobs/uploads/u?_state=x", "/v2/r/blobs/uploads/u?_state=x&digest=sha256%3Aab"),
        (
            "http://127.0.0.1:1/v2/r/blobs/uploads/u?a=b",
            "/v2/r/blobs/uploads/u?a=b&digest=sha256%3Aab",
        ),
    ],
)
def test_append_digest(location: str, expected: str) -> None:
    assert append_digest(location, "sha256:ab") == expected


def test_layers_are_deterministic() -> None:
    assert build_busybox_layer().blob == busybox_layer().blob

    def make() -> bytes:
        return (
            LayerBuilder().dir("d").file("d/f", "x").symlink("d/l", "f").hardlink("h", "d/f").tar()
        )

    assert make() == make()


def test_go_platform_names() -> None:
    assert go_platform("x86_64").architecture == "amd64"
    assert go_platform("aarch64").architecture == "arm64"
    arm = go_platform("armv7l")
    assert (arm.architecture, arm.variant, str(arm)) == ("arm", "v7", "linux/arm/v7")


def test_start_retries_when_port_is_taken(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real_free_port = registry_mod._free_port
        monkeypatch.setattr(
            registry_mod, "_free_port", lambda: next(ports, None) or real_free_port()
        )
        with Registry(tmp_path_factory.mktemp("registry-retry")) as reg:
            assert reg.port != busy
            assert http_get(f"{reg.url}/v2/")[0] == 200
