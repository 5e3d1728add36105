"""Containers against the real daemon, runc under the pod's shim: lifecycle, logs, exec,
events, networking inside a pod."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import (
    container_config,
    create,
    exec_sync,
    log_records,
    log_text,
    new_pod,
    remove,
    run,
    start,
    status,
    stop,
    wait_exit,
    wait_state,
)
from support.daemon import Crispyd
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig, Path]:
    log_dir = tmp_path / "logs"
    pod_id, cfg = new_pod(pods, log_dir)
    return pod_id, cfg, log_dir


def test_lifecycle_exit_zero_and_nonzero(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    img = pod_images.busybox.reference
    ok = create(pods, pod_id, pod_cfg, container_config(img, command=["sh", "-c", "exit 0"]))
    st = status(pods, ok)
    assert st.state == pb.CONTAINER_CREATED and st.created_at > 0 and st.started_at == 0
    assert st.image.image == img and st.image_ref.startswith("sha256:")
    start(pods, ok)
    st = wait_exit(pods, ok)
    assert st.exit_code == 0 and st.reason == "Completed"
    assert st.finished_at >= st.started_at > st.created_at

    bad = run(pods, pod_id, pod_cfg, container_config(img, command=["sh", "-c", "exit 3"]))
    st = wait_exit(pods, bad)
    assert st.exit_code == 3 and st.reason == "Error"

    listed = pods.runtime.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
    ).containers
    assert {c.id for c in listed} == {ok, bad}
    assert all(c.state == pb.CONTAINER_EXITED for c in listed)


def test_unknown_ids(pods: CriClient) -> None:
    with pytest.raises(grpc.RpcError) as e:
        status(pods, "e" * 64)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        exec_sync(pods, "e" * 64, ["true"])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stop(pods, "e" * 64)
    remove(pods, "e" * 64)


def test_name_in_use_in_the_pod_is_refused(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cfg = container_config(pod_images.busybox.reference, name="web", command=["true"])
    first = create(pods, pod_id, pod_cfg, cfg)
    with pytest.raises(grpc.RpcError) as e:
        create(pods, pod_id, pod_cfg, cfg)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'web'" in e.value.details() and first in e.value.details()


def test_log_file_has_cri_records_for_both_streams(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, log_dir = pod
    script = "echo out1; echo err1 >&2; printf 'no newline'"
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, name="logs", command=["sh", "-c", script]),
    )
    st = wait_exit(pods, cid)
    assert st.log_path == str(log_dir / "logs.log")
    records = log_records(Path(st.log_path))
    assert all(TS.match(r[0]) for r in records), records
    assert ("stdout", "F", "out1") in [r[1:] for r in records]
    assert ("stderr", "F", "err1") in [r[1:] for r in records]
    assert log_text(Path(st.log_path), "stdout").startswith("out1\nno newline")


def test_long_lines_are_split_into_partial_records(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(
            pod_images.busybox.reference,
            command=["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo"],
        ),
    )
    st = wait_exit(pods, cid)
    records = log_records(Path(st.log_path))
    tags = [r[2] for r in records if r[1] == "stdout"]
    assert tags[-1] == "F" and "P" in tags
    assert log_text(Path(st.log_path), "stdout") == "x" * 40000 + "\n"


def test_stop_kills_a_process_that_ignores_sigterm(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    script = "trap '' TERM; while :; do sleep 1; done"
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", script]),
    )
    assert wait_state(pods, cid, pb.CONTAINER_RUNNING).stop_signal == pb.SIGTERM  # the default
    time.sleep(0.2)  # the trap is set
    t = time.monotonic()
    stop(pods, cid, timeout=1)
    took = time.monotonic() - t
    st = status(pods, cid)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137
    assert 0.9 < took < 8


def test_stop_with_the_images_stop_signal(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    # the config image says StopSignal SIGUSR1: the trap exits 42 on it
    pod_id, pod_cfg, _ = pod
    script = "trap 'exit 42' USR1; while :; do sleep 0.1; done"
    cfg = container_config(
        pod_images.config.reference,
        command=["sh", "-c", script],
        security=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0)),
    )
    cid = run(pods, pod_id, pod_cfg, cfg)
    assert wait_state(pods, cid, pb.CONTAINER_RUNNING).stop_signal == pb.SIGUSR1
    time.sleep(0.3)
    stop(pods, cid, timeout=10)
    assert status(pods, cid).exit_code == 42


def test_the_configs_stop_signal_wins_over_the_images_and_is_reported(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    script = "trap 'exit 42' USR1; trap 'exit 43' USR2; while :; do sleep 0.1; done"
    cfg = container_config(
        pod_images.config.reference,  # its StopSignal is SIGUSR1
        command=["sh", "-c", script],
        security=pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0)),
    )
    cfg.stop_signal = pb.SIGUSR2
    cid = run(pods, pod_id, pod_cfg, cfg)
    assert wait_state(pods, cid, pb.CONTAINER_RUNNING).stop_signal == pb.SIGUSR2
    time.sleep(0.3)
    stop(pods, cid, timeout=10)
    st = status(pods, cid)
    assert st.exit_code == 43 and st.stop_signal == pb.SIGUSR2  # still reported once exited


def test_remove_a_running_container_kills_it_and_removes_its_files(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sleep", "1000"]),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    bundle = pod_crispyd.state / "containers" / cid
    assert (bundle / "config.json").exists()
    remove(pods, cid)
    remove(pods, cid)
    assert not bundle.exists()
    with pytest.raises(grpc.RpcError):
        status(pods, cid)


def test_exec_sync(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sleep", "1000"]),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    r = exec_sync(pods, cid, ["sh", "-c", "echo hi; echo oops >&2; exit 5"])
    assert (r.exit_code, r.stdout, r.stderr) == (5, b"hi\n", b"oops\n")
    r = exec_sync(pods, cid, ["cat", "/proc/1/cmdline"])
    assert r.stdout == b"sleep\x001000\x00"
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        exec_sync(pods, cid, ["sleep", "100"], timeout=1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t < 10
    # a background child holding stdout does not keep ExecSync waiting
    t = time.monotonic()
    r = exec_sync(pods, cid, ["sh", "-c", "sleep 100 & echo started"], timeout=5)
    assert r.stdout == b"started\n" and time.monotonic() - t < 4


def test_events_in_order(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    seen: list[tuple[str, int]] = []
    stream = pods.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=60)

    def read() -> None:
        try:
            for ev in stream:
                seen.append((ev.container_id, ev.container_event_type))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # subscribed
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", "sleep 0.2"]),
    )
    wait_exit(pods, cid)
    remove(pods, cid)
    deadline = time.monotonic() + 10
    while len([s for s in seen if s[0] == cid]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.cancel()
    assert [t for c, t in seen if c == cid] == [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
        pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT,
    ]


def test_two_containers_share_the_pod_network(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    img = pod_images.busybox.reference
    server = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(img, command=["sh", "-c", "echo hello | nc -l -p 7070"]),
    )
    wait_state(pods, server, pb.CONTAINER_RUNNING)
    time.sleep(0.3)
    client = run(
        pods, pod_id, pod_cfg, container_config(img, command=["sh", "-c", "nc 127.0.0.1 7070"])
    )
    st = wait_exit(pods, client)
    assert log_text(Path(st.log_path)) == "hello\n"


def test_container_init_holds_only_stdio_fds(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["ls", "/proc/self/fd"]),
    )
    st = wait_exit(pods, cid)
    # ls itself opens one directory fd (3) to list the others
    assert log_text(Path(st.log_path)).split() == ["0", "1", "2", "3"]


def test_stop_pod_stops_its_containers_and_remove_pod_removes_them(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sleep", "1000"]),
    )
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    pods.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert status(pods, cid).state == pb.CONTAINER_EXITED
    pods.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    with pytest.raises(grpc.RpcError):
        status(pods, cid)


def test_a_dead_shim_leaves_no_container_unknown(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    img = pod_images.busybox.reference
    cid = run(pods, pod_id, pod_cfg, container_config(img, command=["sleep", "1000"]))
    st = wait_state(pods, cid, pb.CONTAINER_RUNNING)
    info = json.loads(
        pods.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        ).info["info"]
    )
    ctr_pid = json.loads(
        pods.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=True)
        ).info["info"]
    )["pid"]
    os.kill(info["shimPid"], signal.SIGKILL)
    st = wait_exit(pods, cid)
    assert st.reason == "Error" and "shim died" in st.message
    deadline = time.monotonic() + 5
    while Path(f"/proc/{ctr_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{ctr_pid}/cmdline").exists() or not Path(
        f"/proc/{ctr_pid}/cmdline"
    ).read_bytes().startswith(b"sleep")
    # the pod gets a new shim for its next container
    again = run(pods, pod_id, pod_cfg, container_config(img, command=["sh", "-c", "exit 6"]))
    assert wait_exit(pods, again).exit_code == 6


def test_reopen_log_after_rotation(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig, Path], pod_images: TestImages
) -> None:
    pod_id, pod_cfg, _ = pod
    script = "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.05; done"
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", script]),
    )
    log = Path(wait_state(pods, cid, pb.CONTAINER_RUNNING).log_path)
    deadline = time.monotonic() + 5
    while not (log.exists() and "line2" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    pods.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    deadline = time.monotonic() + 5
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    old, new = log_text(rotated).split(), log_text(log).split()
    assert old and new
    # the new file continues where the rotated one stopped
    assert int(new[0][4:]) > int(old[-1][4:])
    stop(pods, cid)
    with pytest.raises(grpc.RpcError) as e:
        pods.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_removed_containers_leave_no_snapshot(
    pods: CriClient,
    pod: tuple[str, pb.PodSandboxConfig, Path],
    pod_images: TestImages,
    pod_crispyd: Crispyd,
) -> None:
    pod_id, pod_cfg, _ = pod
    snaps = pod_crispyd.root / "snapshots"
    before = set(os.listdir(snaps))
    cid = run(
        pods,
        pod_id,
        pod_cfg,
        container_config(pod_images.busybox.reference, command=["sh", "-c", "echo x > /upper"]),
    )
    wait_exit(pods, cid)
    assert len(set(os.listdir(snaps)) - before) == 1  # its writable layer
    remove(pods, cid)
    assert set(os.listdir(snaps)) == before
