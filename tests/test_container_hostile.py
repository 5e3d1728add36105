"""Hostile input to containers, against the real daemon under runc: log paths that would
escape the pod's log directory (absolute, `..`, NUL, symlinks planted in it, a relative
log directory), image StopSignals that name no signal, an ExecSync whose client goes
away, and image VOLUMEs that can't be volumes."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import grpc
import pytest

from crispy import errors
from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import (
    container_config,
    create,
    exec_sync,
    log_text,
    new_pod,
    run,
    status,
    stop,
    wait_state,
)
from support.daemon import Crispyd
from support.images import busybox_layer, image_config, push_image
from support.pods import pod_config, run_pod
from support.registry import Registry
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SECRET = "host file: must not be touched\n"


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig, Path]:
    log_dir = tmp_path / "logs"
    pod_id, cfg = new_pod(pods, log_dir)
    return pod_id, cfg, log_dir


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host dir beside the pod's log dir, holding a file that must stay as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim.log").write_text(SECRET)
    return d


def pod_containers(cri: CriClient, pod_id: str) -> list[pb.Container]:
    resp = cri.runtime.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
    )
    return list(resp.containers)


def pull(cri: CriClient, ref: str) -> None:
    cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)


def refused(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def only_the_secret(d: Path) -> None:
    assert sorted(p.name for p in d.iterdir()) == ["victim.log"]
    assert (d / "victim.log").read_text() == SECRET


# -- log_path and log_directory ---------------------------------------------------------------


def test_log_path_check_unit() -> None:
    from crispy.containers.log_path import container_log_path

    assert container_log_path("/var/log/pods/p", "c/0.log") == "/var/log/pods/p/c/0.log"
    assert container_log_path("/var/log/pods/p", "./c//0.log") == "/var/log/pods/p/c/0.log"
    assert container_log_path("", "c/0.log") == ""  # no log directory: no log
    assert container_log_path("/var/log/pods/p", "") == ""
    for bad in ("/etc/passwd", "../x.log", "c/../../x.log", "a\0b", "c/", ".", "c/.."):
        with pytest.raises(errors.InvalidArgument, match="log_path"):
            container_log_path("/var/log/pods/p", bad)
    for bad_dir in ("var/log/pods/p", "./logs", "logs\0x"):
        with pytest.raises(errors.InvalidArgument, match="log_directory"):
            container_log_path(bad_dir, "c/0.log")


@pytest.mark.parametrize(
    "log_path",
    ["{outside}/victim.log", "../outside/victim.log", "sub/../../outside/victim.log", "a\0b"],
    ids=["absolute", "dotdot", "dotdot-inner", "nul"],
)
def test_log_path_that_escapes_is_refused_and_touches_nothing(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    pod_images: TestImages,
    outside: Path,
    log_path: str,
) -> None:
    pod_id, pod_cfg, log_dir = pod
    assert log_dir.parent == outside.parent
    cfg = container_config(
        pod_images.busybox.reference,
        command=["sh", "-c", "echo escaped; sleep 1"],
        log_path=log_path.format(outside=outside),
    )
    before = sorted(p.name for p in log_dir.iterdir()) if log_dir.exists() else []
    err = refused(lambda: run(pods, pod_id, pod_cfg, cfg))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "log_path" in (err.details() or "")
    time.sleep(0.3)
    only_the_secret(outside)
    after = sorted(p.name for p in log_dir.iterdir()) if log_dir.exists() else []
    assert after == before  # nothing made in the log dir either
    assert pod_containers(pods, pod_id) == []


def test_symlink_planted_at_the_log_path_is_not_written_through(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    pod_images: TestImages,
    outside: Path,
) -> None:
    pod_id, pod_cfg, log_dir = pod
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "ctr.log").symlink_to(outside / "victim.log")
    (log_dir / "sub").symlink_to(outside)  # a component of the path
    for log_path in ("ctr.log", "sub/ctr.log", "sub/victim.log"):
        cfg = container_config(
            pod_images.busybox.reference,
            command=["sh", "-c", "echo escaped; sleep 1"],
            log_path=log_path,
        )
        err = refused(lambda cfg=cfg: run(pods, pod_id, pod_cfg, cfg))  # type: ignore[misc]
        assert "log" in (err.details() or ""), err.details()
        time.sleep(0.3)
        only_the_secret(outside)
        assert os.path.islink(log_dir / "ctr.log") and os.path.islink(log_dir / "sub")
    assert pod_containers(pods, pod_id) == []


def test_reopen_log_does_not_follow_a_symlink_planted_after_rotation(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    pod_images: TestImages,
    outside: Path,
) -> None:
    pod_id, pod_cfg, log_dir = pod
    cfg = container_config(
        pod_images.busybox.reference,
        command=["sh", "-c", "while :; do echo tick; sleep 0.05; done"],
        log_path="ctr/0.log",
    )
    cid = run(pods, pod_id, pod_cfg, cfg)
    log = log_dir / "ctr" / "0.log"
    deadline = time.monotonic() + 10
    while "tick" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no output in the log"
        time.sleep(0.05)
    rotated = log_dir / "ctr" / "0.log.1"
    log.rename(rotated)
    log.symlink_to(outside / "victim.log")
    err = refused(
        lambda: pods.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    )
    assert "log" in (err.details() or ""), err.details()
    time.sleep(0.5)
    only_the_secret(outside)
    size = rotated.stat().st_size
    time.sleep(0.3)
    assert rotated.stat().st_size > size  # the output goes on into the file it had
    # A real file again: reopened, written to.
    log.unlink()
    pods.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    deadline = time.monotonic() + 10
    while "tick" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no output after the reopen"
        time.sleep(0.05)
    assert not log.is_symlink()
    only_the_secret(outside)
    stop(pods, cid, timeout=0)


def test_relative_log_directory_is_refused(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd
) -> None:
    rel = f"crispy-hostile-{uuid.uuid4().hex[:12]}"
    places = [Path(os.getcwd()) / rel, Path("/") / rel]
    cfg = pod_config(log_directory=rel)
    try:
        try:
            pod_id = run_pod(pods, cfg)
        except grpc.RpcError as e:  # refused at RunPodSandbox already: as good
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
            assert "log_directory" in (e.details() or "")
            return
        ccfg = container_config(
            pod_images.busybox.reference, command=["true"], log_path="ctr/0.log"
        )
        err = refused(lambda: create(pods, pod_id, cfg, ccfg))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "log_directory" in (err.details() or "")
        for place in places:
            assert not (place / "ctr").exists()
        assert pod_containers(pods, pod_id) == []
    finally:
        for place in places:  # what RunPodSandbox may have made (not CreateContainer)
            with contextlib.suppress(OSError):
                place.rmdir()


# -- stop signals -----------------------------------------------------------------------------

# The shell is PID 1: only trapped signals reach it. Each trap exits with its own code.
TRAPS = (
    "trap 'exit 143' TERM; trap 'exit 138' USR1; trap 'exit 165' 37; while :; do sleep 0.1; done"
)


@pytest.mark.parametrize(
    ("stop_signal", "exit_code", "bad", "reported"),
    [
        ("SIGNOPE", 143, True, pb.SIGTERM),
        ("99", 143, True, pb.SIGTERM),
        ("0", 143, True, pb.SIGTERM),
        ("RTMIN+3", 165, False, pb.SIGRTMINPLUS3),  # SIGRTMIN (34) + 3
        ("SIGUSR1", 138, False, pb.SIGUSR1),
    ],
)
def test_an_images_stop_signal_never_keeps_a_container_from_stopping(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    registry: Registry,
    pod_crispyd: Crispyd,
    stop_signal: str,
    exit_code: int,
    bad: bool,
    reported: pb.Signal.ValueType,
) -> None:
    pod_id, pod_cfg, _ = pod
    layers = [busybox_layer()]
    config = image_config(
        layers, env=[DEFAULT_PATH], cmd=["sh"], stop_signal=stop_signal, history=["busybox"]
    )
    tag = uuid.uuid4().hex[:12]
    image = push_image(registry, "crispy-test/stopsignal", tag, layers, config)
    pull(pods, image.reference)
    cid = run(pods, pod_id, pod_cfg, container_config(image.reference, command=["sh", "-c", TRAPS]))
    assert wait_state(pods, cid, pb.CONTAINER_RUNNING).stop_signal == reported  # in effect
    time.sleep(0.3)  # the traps are set
    t = time.monotonic()
    stop(pods, cid, timeout=10)
    took = time.monotonic() - t
    st = status(pods, cid)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == exit_code, st
    assert took < 5, took
    if bad:
        log = pod_crispyd.log()
        assert f"StopSignal {stop_signal!r}" in log and cid[:12] in log


# -- ExecSync ---------------------------------------------------------------------------------


def test_exec_sync_without_timeout_is_killed_when_its_client_goes_away(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sleep", "3600"]),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)

    def running() -> bool:
        out = exec_sync(pods, cid, ["ps", "-o", "args"]).stdout.decode()
        return "sleep 4242" in out

    req = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "sleep 4242; :"], timeout=0)
    fut = pods.runtime.ExecSync.future(req, timeout=120)
    deadline = time.monotonic() + 10
    while not running():
        assert time.monotonic() < deadline, "the exec'd command never ran"
        time.sleep(0.1)
    fut.cancel()
    deadline = time.monotonic() + 10
    while running():
        assert time.monotonic() < deadline, "the exec'd command outlived its client"
        time.sleep(0.1)
    # The container itself is untouched; another ExecSync works.
    assert status(pods, cid).state == pb.CONTAINER_RUNNING
    assert exec_sync(pods, cid, ["echo", "still here"]).stdout == b"still here\n"
    stop(pods, cid, timeout=0)


# -- image VOLUMEs ----------------------------------------------------------------------------


@pytest.mark.parametrize("volume", ["/", "//", "/.", "", "data"])
def test_an_image_volume_that_cannot_be_one_is_refused_clearly(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    registry: Registry,
    volume: str,
) -> None:
    pod_id, pod_cfg, _ = pod
    layers = [busybox_layer()]
    config = image_config(
        layers, env=[DEFAULT_PATH], cmd=["sh"], volumes={volume: {}}, history=["busybox"]
    )
    image = push_image(registry, "crispy-test/badvolume", uuid.uuid4().hex[:12], layers, config)
    pull(pods, image.reference)
    cfg = container_config(image.reference, command=["true"])
    err = refused(lambda: run(pods, pod_id, pod_cfg, cfg))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "image config Volumes" in (err.details() or "") and repr(volume) in (err.details() or "")
    assert pod_containers(pods, pod_id) == []


def test_log_text_helper_still_reads_a_good_log(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    """A nested log_path (kubelet's <name>/<attempt>.log) is made and written as before."""
    pod_id, pod_cfg, log_dir = pod
    cfg = container_config(
        pod_images.busybox.reference, command=["echo", "fine"], log_path="web/0.log"
    )
    cid = run(pods, pod_id, pod_cfg, cfg)
    deadline = time.monotonic() + 20
    while status(pods, cid).state != pb.CONTAINER_EXITED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert log_text(log_dir / "web" / "0.log") == "fine\n"
    assert status(pods, cid).log_path == str(log_dir / "web" / "0.log")
