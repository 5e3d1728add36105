"""Session-scoped pytest fixtures: a local registry and the test images pushed to it.

Loaded from tests/conftest.py via ``pytest_plugins``.  Images are built from /bin/busybox
(the busybox layer is built once and its bytes reused) and pushed once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .images import (
    BUSYBOX_GROUP,
    BUSYBOX_PASSWD,
    LayerBuilder,
    MediaKind,
    PushedImage,
    PushedIndex,
    UnpackExpectation,
    busybox_layer,
    foreign_platform,
    host_platform,
    image_config,
    push_image,
    push_index,
    tag_image,
)
from .registry import Registry
from .scratch import PAUSE_USER, pause_layer, static_busybox_layer

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CRISPY_PASSWD_LINE = "crispy:x:1234:5678:crispy user:/home/crispy:/bin/sh\n"
CRISPY_GROUP_LINES = "crispygrp:x:5678:\nextra:x:4321:crispy\n"


@dataclass(frozen=True, eq=False)
class TestImages:
    """Every image the suite pulls; see build_test_images for what each one holds."""

    __test__ = False  # not a test class, despite the name

    busybox: PushedImage
    busybox_tag2: PushedImage
    layers: PushedImage
    config: PushedImage
    docker: PushedImage
    multiarch: PushedIndex
    multiarch_docker: PushedIndex
    pause: PushedImage  # FROM scratch: /pause only, as registry.k8s.io/pause
    scratch: PushedImage  # FROM scratch: /busybox only, as distroless images


def _layers_image(registry: Registry) -> PushedImage:
    base = busybox_layer()
    add = (
        LayerBuilder()
        .dir("data")
        .file("data/keep", "keep\n")
        .file("data/gone", "gone\n")
        .dir("data/dir")
        .file("data/dir/inner", "inner\n")
        .dir("opaque")
        .file("opaque/old1", "old1\n")
        .file("opaque/old2", "old2\n")
        .dir("replace")
        .file("replace/file", "v1\n")
        .build()
    )
    change = (
        LayerBuilder()
        .dir("data")
        .whiteout("data/gone")
        .whiteout("data/dir")
        .dir("opaque")
        .opaque("opaque")
        .file("opaque/new", "new\n")
        .dir("replace")
        .file("replace/file", "v2\n")
        .build()
    )
    layers = [base, add, change]
    expect = UnpackExpectation(
        files={
            "/data/keep": b"keep\n",
            "/opaque/new": b"new\n",
            "/replace/file": b"v2\n",
            "/etc/passwd": BUSYBOX_PASSWD.encode(),
        },
        dirs=("/data", "/opaque", "/replace", "/bin", "/tmp"),
        absent=(
            "/data/gone",
            "/data/dir",
            "/data/dir/inner",
            "/opaque/old1",
            "/opaque/old2",
            # The markers themselves must not be materialised either.
            "/data/.wh.gone",
            "/data/.wh.dir",
            "/opaque/.wh..wh..opq",
        ),
    )
    config = image_config(
        layers, cmd=["sh"], history=["busybox", "add files", "whiteouts and opaque dir"]
    )
    return push_image(registry, "crispy-test/layers", "latest", layers, config, expect=expect)


def _config_image(registry: Registry) -> PushedImage:
    base = busybox_layer()
    passwd = BUSYBOX_PASSWD + CRISPY_PASSWD_LINE
    group = BUSYBOX_GROUP + CRISPY_GROUP_LINES
    user_layer = (
        LayerBuilder()
        .dir("etc")
        .file("etc/passwd", passwd)
        .file("etc/group", group)
        .dir("home")
        .dir("home/crispy", mode=0o755, uid=1234, gid=5678)
        .build()
    )
    layers = [base, user_layer]
    config = image_config(
        layers,
        env=[DEFAULT_PATH, "CRISPY_TEST=1"],
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo hello"],
        working_dir="/work",  # deliberately absent from the rootfs: the runtime creates it
        user="crispy",
        exposed_ports={"8080/tcp": {}},
        volumes={"/data": {}},
        labels={"org.example.test": "config"},
        stop_signal="SIGUSR1",
        history=["busybox", "add user crispy"],
    )
    expect = UnpackExpectation(
        files={"/etc/passwd": passwd.encode(), "/etc/group": group.encode()},
        dirs=("/home/crispy",),
    )
    return push_image(registry, "crispy-test/config", "latest", layers, config, expect=expect)


def _multiarch(registry: Registry, repo: str, *, docker: bool) -> PushedIndex:
    host, other = host_platform(), foreign_platform()
    media: MediaKind = "docker" if docker else "oci"
    host_layers = [busybox_layer(), LayerBuilder().file("arch", f"{host.architecture}\n").build()]
    other_layers = [LayerBuilder().file("arch", f"{other.architecture}\n").build()]
    children = [
        push_image(
            registry,
            repo,
            None,
            layers,
            image_config(layers, platform=plat, cmd=["sh"]),
            media=media,
            expect=UnpackExpectation(files={"/arch": f"{plat.architecture}\n".encode()}),
        )
        for plat, layers in ((host, host_layers), (other, other_layers))
    ]
    return push_index(registry, repo, "latest", children, media=media)


def _pause_image(registry: Registry) -> PushedImage:
    """Built like registry.k8s.io/pause: FROM scratch, only a static /pause, run as 65535."""
    layers = [pause_layer()]
    config = image_config(
        layers, env=[DEFAULT_PATH], entrypoint=["/pause"], user=PAUSE_USER, history=["pause"]
    )
    expect = UnpackExpectation(files={}, absent=("/proc", "/dev", "/sys", "/etc", "/bin"))
    return push_image(registry, "crispy-test/pause", "latest", layers, config, expect=expect)


def _scratch_image(registry: Registry) -> PushedImage:
    """A distroless-style image: the static busybox at /busybox and no other file or dir."""
    layers = [static_busybox_layer()]
    config = image_config(
        layers, entrypoint=["/busybox"], cmd=["sleep", "3600"], history=["busybox"]
    )
    return push_image(registry, "crispy-test/scratch", "latest", layers, config)


def build_test_images(registry: Registry) -> TestImages:
    base = busybox_layer()
    bb_config = image_config([base], env=[DEFAULT_PATH], cmd=["sh"], history=["busybox"])
    busybox = push_image(
        registry,
        "crispy-test/busybox",
        "latest",
        [base],
        bb_config,
        expect=UnpackExpectation(files={"/etc/group": BUSYBOX_GROUP.encode()}, dirs=("/tmp",)),
    )
    return TestImages(
        busybox=busybox,
        busybox_tag2=tag_image(registry, busybox, "1.35"),
        layers=_layers_image(registry),
        config=_config_image(registry),
        docker=push_image(
            registry, "crispy-test/busybox-docker", "latest", [base], bb_config, media="docker"
        ),
        multiarch=_multiarch(registry, "crispy-test/multiarch", docker=False),
        multiarch_docker=_multiarch(registry, "crispy-test/multiarch-docker", docker=True),
        pause=_pause_image(registry),
        scratch=_scratch_image(registry),
    )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def test_images(registry: Registry) -> TestImages:
    return build_test_images(registry)
