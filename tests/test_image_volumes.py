"""CRI image mounts (KEP-4639 image volumes) against the real daemon, under runc: an image
mounted read-only in a container, its sub paths, the refusals, ContainerStatus, the
layers kept while a container uses them and dropped after, under both snapshotters, and
a crispyd killed mid-create."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.containers import image_mounts
from support.containers import (
    container_config,
    create,
    exec_sync,
    new_pod,
    remove,
    run,
    status,
    wait_exit,
    wait_state,
)
from support.daemon import Crispyd
from support.images import LayerBuilder, PushedImage, image_config, push_image
from support.pods import TestNetwork, pod_config, pod_daemon_config, remove_all_pods, run_pod
from support.registry import Registry
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HELLO = "hello from the image volume\n"


def volume_image(registry: Registry, repo: str, *, layers: int = 2) -> PushedImage:
    """A data-only image (no busybox in it); a uuid makes its layers its own.

    Two layers, the second deleting a file of the first, so the mount is an overlay of
    them; one layer, a read-only bind of it.
    """
    mark = uuid.uuid4().hex
    first = (
        LayerBuilder()
        .dir("data")
        .file("data/hello", HELLO)
        .file("data/gone", "deleted by the upper layer\n")
        .file("mark", mark)
        .dir("sub")
        .dir("sub/deeper")
        .file("sub/deeper/file", "deeper\n")
        .symlink("link-rel", "sub")
        .symlink("link-abs", "/sub/deeper")
        .symlink("link-out", "../../../..")
        .symlink("sub/up-out", "../../etc")
        .build()
    )
    upper = LayerBuilder().dir("data").whiteout("data/gone").file("data/upper", "up\n").build()
    chain = [first, upper][:layers]
    return push_image(registry, repo, "v1", chain, image_config(chain, history=["data"] * layers))


def pull(cri: CriClient, ref: str) -> str:
    resp = cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
    return str(resp.image_ref)


def image_mount(
    ref: str, dest: str = "/vol", sub_path: str = "", readonly: bool = True, host_path: str = ""
) -> pb.Mount:
    return pb.Mount(
        container_path=dest,
        host_path=host_path,
        readonly=readonly,
        image=pb.ImageSpec(image=ref),
        image_sub_path=sub_path,
    )


def sleeper(busybox: str, *mounts: pb.Mount) -> pb.ContainerConfig:
    return container_config(busybox, command=["sleep", "1000"], mounts=list(mounts))


def snapshot_dirs(d: Crispyd) -> set[str]:
    return {n for n in os.listdir(d.root / "snapshots") if n.isdigit()}


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def sh(cri: CriClient, cid: str, script: str) -> pb.ExecSyncResponse:
    return exec_sync(cri, cid, ["sh", "-c", script], timeout=20)


@pytest.fixture(scope="module")
def vol_image(pod_crispyd: Crispyd, registry: Registry) -> tuple[PushedImage, str]:
    """One volume image pulled on the shared daemon, for tests that don't remove it."""
    img = volume_image(registry, "crispy-test/imgvol-shared")
    with pod_crispyd.client(timeout=120) as c:
        return img, pull(c, img.reference)


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig]:
    return new_pod(pods, tmp_path / "logs")


# -- mounting and reading -------------------------------------------------------------------


def test_the_image_is_mounted_read_only_as_its_layers_make_it(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    vol_image: tuple[PushedImage, str],
) -> None:
    img, image_id = vol_image
    assert image_id == img.image_id
    pod_id, pod_cfg = pod
    # kubelet sends the ID PullImage returned; a tag resolves the same way
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        sleeper(
            pod_images.busybox.reference,
            image_mount(image_id),
            image_mount(img.reference, dest="/by-tag/vol"),
        ),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    for dest in ("/vol", "/by-tag/vol"):
        out = sh(pods, cid, f"cat {dest}/data/hello {dest}/data/upper; ls {dest}/data")
        assert out.exit_code == 0, out.stderr
        assert out.stdout.decode() == HELLO + "up\nhello\nupper\n"  # data/gone whited out
    wrote = sh(pods, cid, "echo x > /vol/new")
    assert wrote.exit_code != 0 and b"Read-only file system" in wrote.stderr
    # the container's own rootfs stays writable
    assert sh(pods, cid, "echo x > /rootfs-ok && cat /rootfs-ok").stdout == b"x\n"


def test_a_one_layer_image_is_a_read_only_bind_of_it(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
    registry: Registry,
) -> None:
    img = volume_image(registry, "crispy-test/imgvol-one", layers=1)
    image_id = pull(pods, img.reference)
    pod_id, pod_cfg = pod
    cfg = container_config(
        pod_images.busybox.reference,
        command=["sh", "-c", "cat /vol/data/gone; touch /vol/x"],
        mounts=[image_mount(image_id)],
    )
    cid = run(pods, pod_id, pod_cfg, cfg)
    st = wait_exit(pods, cid)
    assert st.exit_code != 0  # touch on a read-only mount
    log = (Path(pod_cfg.log_directory) / cfg.log_path).read_text()
    assert "deleted by the upper layer" in log and "Read-only file system" in log
    remove(pods, cid)
    pods.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))


@pytest.mark.parametrize(
    ("sub_path", "listing"),
    [
        ("sub", "deeper\nup-out\n"),
        ("sub/deeper", "file\n"),
        ("./sub//deeper/", "file\n"),
        ("link-rel", "deeper\nup-out\n"),  # a relative symlink inside the image
        ("link-abs", "file\n"),  # an absolute one: from the image's root, not the host's
    ],
)
def test_sub_path_selects_a_dir_of_the_image(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    vol_image: tuple[PushedImage, str],
    sub_path: str,
    listing: str,
) -> None:
    _, image_id = vol_image
    pod_id, pod_cfg = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        sleeper(pod_images.busybox.reference, image_mount(image_id, sub_path=sub_path)),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    assert sh(pods, cid, "ls /vol").stdout.decode() == listing


# -- refusals -------------------------------------------------------------------------------


def _refused(
    cri: CriClient, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        create(cri, pod_id, pod_cfg, cfg)
    return e.value


def test_an_image_that_is_not_pulled_is_not_found(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
    registry: Registry,
) -> None:
    img = volume_image(registry, "crispy-test/imgvol-never-pulled")
    pod_id, pod_cfg = pod
    before = snapshot_dirs(pod_crispyd)
    for ref in (img.reference, img.image_id):
        err = _refused(
            pods, pod_id, pod_cfg, sleeper(pod_images.busybox.reference, image_mount(ref))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert ref in (err.details() or "") and "/vol" in (err.details() or "")
    assert snapshot_dirs(pod_crispyd) == before
    assert not pods.runtime.ListContainers(pb.ListContainersRequest()).containers


@pytest.mark.parametrize(
    ("mount", "words"),
    [
        (dict(readonly=False), ["/vol", "readonly"]),
        (dict(host_path="/tmp"), ["/vol", "host_path"]),
        (dict(sub_path="../etc"), ["image_sub_path", "'..'"]),
        (dict(sub_path="sub/../../etc"), ["image_sub_path", "'..'"]),
        (dict(sub_path="/sub"), ["image_sub_path", "not a relative path"]),
        (dict(sub_path="sub\x00x"), ["image_sub_path", "NUL"]),
        (dict(sub_path="missing"), ["image_sub_path", "does not exist"]),
        (dict(sub_path="sub/missing/deeper"), ["image_sub_path", "does not exist"]),
        (dict(sub_path="data/hello"), ["image_sub_path", "not a directory"]),
        (dict(sub_path="data/hello/x"), ["image_sub_path", "not a directory"]),
        (dict(sub_path="link-out"), ["image_sub_path", "leads out of the image"]),
        (dict(sub_path="sub/up-out"), ["image_sub_path", "leads out of the image"]),
    ],
)
def test_bad_image_mounts_are_invalid_and_leave_nothing(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
    vol_image: tuple[PushedImage, str],
    mount: dict[str, object],
    words: list[str],
) -> None:
    _, image_id = vol_image
    pod_id, pod_cfg = pod
    before = snapshot_dirs(pod_crispyd)
    cfg = sleeper(pod_images.busybox.reference, image_mount(image_id, **mount))  # type: ignore[arg-type]
    err = _refused(pods, pod_id, pod_cfg, cfg)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    for w in words:
        assert w in (err.details() or "")
    assert snapshot_dirs(pod_crispyd) == before
    assert not pods.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert not mounts_below(pod_crispyd.state / "containers")


def test_image_sub_path_on_a_host_mount_is_invalid(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    pod_id, pod_cfg = pod
    m = pb.Mount(container_path="/h", host_path="/tmp", image_sub_path="sub")
    err = _refused(pods, pod_id, pod_cfg, sleeper(pod_images.busybox.reference, m))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image_sub_path" in (err.details() or "")


# -- status ---------------------------------------------------------------------------------


def test_container_status_reports_the_image_mount(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    vol_image: tuple[PushedImage, str],
) -> None:
    img, image_id = vol_image
    pod_id, pod_cfg = pod
    host = pb.Mount(container_path="/host", host_path="/tmp", readonly=True)
    cid = create(
        pods,
        pod_id,
        pod_cfg,
        sleeper(
            pod_images.busybox.reference,
            image_mount(img.reference, sub_path="sub"),
            host,
        ),
    )
    mounts = list(status(pods, cid).mounts)
    assert len(mounts) == 2
    vol, h = mounts
    assert vol.container_path == "/vol" and vol.host_path == "" and vol.readonly
    assert vol.image.image == image_id  # the ID, though a tag was asked
    assert vol.image.user_specified_image == img.reference
    assert vol.image_sub_path == "sub"
    assert h.host_path == "/tmp" and not h.HasField("image") and h.image_sub_path == ""


# -- garbage collection and cleanup -----------------------------------------------------------


def test_layers_in_use_survive_remove_image_and_go_with_the_last_container(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
    registry: Registry,
) -> None:
    pod_id, pod_cfg = pod
    busybox = pod_images.busybox.reference
    before = snapshot_dirs(pod_crispyd)
    img = volume_image(registry, "crispy-test/imgvol-gc")
    image_id = pull(pods, img.reference)
    layer_dirs = snapshot_dirs(pod_crispyd) - before
    assert len(layer_dirs) == 2

    running = run(pods, pod_id, pod_cfg, sleeper(busybox, image_mount(image_id)))
    exited = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(busybox, command=["true"], mounts=[image_mount(image_id)]),
    )
    created = create(pods, pod_id, pod_cfg, sleeper(busybox, image_mount(image_id)))
    wait_exit(pods, exited)
    wait_state(pods, running, pb.CONTAINER_RUNNING)
    bundles = [pod_crispyd.state / "containers" / c for c in (running, exited, created)]
    assert all(mounts_below(b / "image-mounts") for b in bundles)

    pods.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    st = pods.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id)))
    assert not st.HasField("image")  # the image is gone...
    assert layer_dirs <= snapshot_dirs(pod_crispyd)  # ...not its layers
    assert sh(pods, running, "cat /vol/data/hello").stdout.decode() == HELLO
    assert status(pods, exited).mounts[0].image.image == image_id

    for cid in (running, exited):
        remove(pods, cid)
        assert layer_dirs <= snapshot_dirs(pod_crispyd)  # another container still uses them
    remove(pods, created)
    assert snapshot_dirs(pod_crispyd) == before
    for b in bundles:
        assert not b.exists() and not mounts_below(b)


def test_removing_the_pod_removes_its_image_mounts(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
    vol_image: tuple[PushedImage, str],
) -> None:
    _, image_id = vol_image
    pod_id, pod_cfg = pod
    before = snapshot_dirs(pod_crispyd)
    cid = run(pods, pod_id, pod_cfg, sleeper(pod_images.busybox.reference, image_mount(image_id)))
    assert len(snapshot_dirs(pod_crispyd) - before) == 2  # the rootfs and the view
    pods.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    pods.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert snapshot_dirs(pod_crispyd) == before
    assert not mounts_below(pod_crispyd.state / "containers" / cid)


# -- the native snapshotter, and a crispyd killed mid-create --------------------------------

HANG_RUNTIME = """#!/bin/sh
# runc, except that `create` waits while the flag file exists (a slow runtime)
for a in "$@"; do
  if [ "$a" = create ] && [ -e {flag} ]; then touch {started}; sleep 15; break; fi
done
exec {runc} "$@"
"""


@pytest.fixture(scope="module")
def native_daemon(
    tmp_path_factory: pytest.TempPathFactory, test_images: TestImages
) -> Iterator[Crispyd]:
    base = tmp_path_factory.mktemp("native")
    net = TestNetwork.random("v", 246, base / "ipam")
    runc = shutil.which("runc")
    assert runc is not None
    hang = base / "hang-runtime"
    hang.write_text(HANG_RUNTIME.format(flag=base / "hang", started=base / "hanging", runc=runc))
    hang.chmod(0o755)
    extra = f'[images]\nsnapshotter = "native"\n[runtimes.hang]\npath = "{hang}"\n'
    d = Crispyd(
        base / "d", config=pod_daemon_config(base / "d", net, test_images.pause.reference, extra)
    )
    (d.base / "net.d" / "10-test.conflist").write_text(net.conflist())
    d.start()
    with d.client(timeout=120) as c:
        pull(c, test_images.busybox.reference)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(grpc.RpcError), d.client(timeout=60) as c:
            remove_all_pods(c)
    d.stop()
    net.remove_bridge()


def test_native_snapshotter_mounts_a_view_and_drops_it(
    native_daemon: Crispyd, registry: Registry, test_images: TestImages, tmp_path: Path
) -> None:
    with native_daemon.client(timeout=60) as c:
        before = snapshot_dirs(native_daemon)
        img = volume_image(registry, "crispy-test/imgvol-native")
        image_id = pull(c, img.reference)
        layers = snapshot_dirs(native_daemon) - before
        pod_id, pod_cfg = new_pod(c, tmp_path / "logs")
        cid = run(
            c,
            pod_id,
            pod_cfg,
            sleeper(
                test_images.busybox.reference,
                image_mount(image_id),
                image_mount(image_id, dest="/deeper", sub_path="link-abs"),
            ),
        )
        wait_state(c, cid, pb.CONTAINER_RUNNING)
        out = sh(c, cid, "ls /vol/data; cat /deeper/file; touch /vol/x")
        assert out.stdout.decode() == "hello\nupper\ndeeper\n"
        assert out.exit_code != 0 and b"Read-only file system" in out.stderr
        c.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
        assert layers <= snapshot_dirs(native_daemon)
        assert sh(c, cid, "cat /vol/data/hello").stdout.decode() == HELLO
        remove(c, cid)
        assert snapshot_dirs(native_daemon) == before
        assert not mounts_below(native_daemon.state / "containers")


def test_a_crispyd_killed_mid_create_leaks_no_image_mount(
    native_daemon: Crispyd, registry: Registry, test_images: TestImages, tmp_path: Path
) -> None:
    flag, started = native_daemon.base.parent / "hang", native_daemon.base.parent / "hanging"
    base = snapshot_dirs(native_daemon)
    with native_daemon.client(timeout=60) as c:
        img = volume_image(registry, "crispy-test/imgvol-crash")
        image_id = pull(c, img.reference)
        pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
        pod_id = run_pod(c, pod_cfg, handler="hang")
    before = snapshot_dirs(native_daemon)
    failed: list[grpc.RpcError] = []

    def create_it() -> None:
        cfg = sleeper(test_images.busybox.reference, image_mount(image_id))
        with native_daemon.client(timeout=60) as c:
            try:
                create(c, pod_id, pod_cfg, cfg)
            except grpc.RpcError as e:
                failed.append(e)

    flag.touch()  # the handler's next `create` waits
    t = threading.Thread(target=create_it)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, native_daemon.log()[-3000:]
            time.sleep(0.05)
        # by the time the runtime is asked to create, the view is made and mounted
        assert len(snapshot_dirs(native_daemon) - before) == 2  # the rootfs and the view
        assert mounts_below(native_daemon.state / "containers")
        native_daemon.kill()
    finally:
        flag.unlink()
        t.join(60)
        started.unlink(missing_ok=True)
    assert failed  # the call died with crispyd
    native_daemon.start()
    with native_daemon.client(timeout=60) as c:
        assert not c.runtime.ListContainers(pb.ListContainersRequest()).containers
        assert snapshot_dirs(native_daemon) == before
        assert not mounts_below(native_daemon.state / "containers")
        # nothing holds the image's layers any more: removing it frees them
        c.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
        assert snapshot_dirs(native_daemon) == base


# -- the sub path walk, without a daemon -----------------------------------------------------


def test_sub_path_walk_stops_at_symlink_loops_and_stays_in_the_root(tmp_path: Path) -> None:
    root = tmp_path / "image"
    (root / "a" / "b").mkdir(parents=True)
    (root / "loop").symlink_to("loop")
    (root / "abs-up").symlink_to("/../../a")  # ".." at an absolute target's root: out
    (root / "a" / "back").symlink_to("../a/b")
    what = "image_sub_path"
    with pytest.raises(errors.InvalidArgument, match="image_sub_path: too many levels"):
        image_mounts.resolve_sub_path(str(root), "loop", what)
    with pytest.raises(errors.InvalidArgument, match="image_sub_path leads out of the image"):
        image_mounts.resolve_sub_path(str(root), "abs-up", what)
    assert image_mounts.resolve_sub_path(str(root), "a/back", what) == str(root / "a" / "b")
    assert image_mounts.resolve_sub_path(str(root), "", what) == str(root)
