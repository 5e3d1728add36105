"""GetContainerEvents as kubelet's Evented PLEG reads it: pod sandbox events beside the
containers', each carrying the pod's sandbox status and its containers' statuses as they
were when it happened; no event lost between subscribing and listing; a subscriber that
stops reading is dropped, never waited for."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import container_config, create, start, stop, wait_exit
from support.daemon import Crispyd
from support.pods import pod_config, remove_pod, run_pod, stop_pod
from support.pods import pod_status as pod_status_info
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

Seen = list[pb.ContainerEventResponse]


class Subscriber:
    """A GetContainerEvents stream read by a thread, like kubelet's; subscribed (its
    headers arrived) when the constructor returns."""

    def __init__(self, cri: CriClient) -> None:
        self.stream = cri.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=120)
        self.stream.initial_metadata()  # blocks until crispy has registered the stream
        self.seen: Seen = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for ev in self.stream:
                self.seen.append(ev)
        except grpc.RpcError as e:
            self.error = e

    def wait_for(self, cid: str, kind: int, timeout: float = 20) -> Seen:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.container_id == cid and e.container_event_type == kind for e in self.seen):
                return list(self.seen)
            time.sleep(0.02)
        got = [(e.container_id[:12], e.container_event_type) for e in self.seen]
        raise TimeoutError(f"no event {kind} for {cid}: {got}")

    def close(self) -> None:
        self.stream.cancel()
        self._thread.join(5)


@pytest.fixture
def subscriber(pods: CriClient) -> Iterator[Subscriber]:
    sub = Subscriber(pods)
    yield sub
    sub.close()


@pytest.mark.parametrize("pid", [pb.CONTAINER, pb.POD], ids=["plain", "infra"])
def test_a_pods_whole_life_in_events(
    pods: CriClient,
    pod_images: TestImages,
    subscriber: Subscriber,
    tmp_path: Path,
    pid: pb.NamespaceMode.ValueType,
) -> None:
    # No pause between subscribing and the first change: the headers are the guarantee.
    cfg = pod_config(pid=pid, log_directory=str(tmp_path / "logs"))
    pod_id = run_pod(pods, cfg)
    cid = create(
        pods, pod_id, cfg, container_config(pod_images.busybox.reference, command=["sleep", "60"])
    )
    start(pods, cid)
    stop(pods, cid)
    wait_exit(pods, cid)
    stop_pod(pods, pod_id)
    remove_pod(pods, pod_id)
    seen = subscriber.wait_for(pod_id, pb.CONTAINER_DELETED_EVENT)

    mine = [e for e in seen if e.container_id in (pod_id, cid)]
    names = {pod_id: "pod", cid: "ctr"}
    kinds = {
        pb.CONTAINER_CREATED_EVENT: "created",
        pb.CONTAINER_STARTED_EVENT: "started",
        pb.CONTAINER_STOPPED_EVENT: "stopped",
        pb.CONTAINER_DELETED_EVENT: "deleted",
    }
    assert [(names[e.container_id], kinds[e.container_event_type]) for e in mine] == [
        ("pod", "created"),
        ("pod", "started"),
        ("ctr", "created"),
        ("ctr", "started"),
        ("ctr", "stopped"),
        ("pod", "stopped"),
        ("ctr", "deleted"),  # RemovePodSandbox removes its containers first
        ("pod", "deleted"),
    ]
    # Each carries the sandbox's status and its containers' as they were at that moment.
    pod_states = [e.pod_sandbox_status.state for e in mine]
    ready, notready = pb.SANDBOX_READY, pb.SANDBOX_NOTREADY
    assert pod_states == [notready, ready, ready, ready, ready, notready, notready, notready]
    assert all(e.pod_sandbox_status.id == pod_id for e in mine)
    assert all(e.pod_sandbox_status.metadata == cfg.metadata for e in mine)
    ctr_states = [[(c.id, c.state) for c in e.containers_statuses] for e in mine]
    assert ctr_states == [
        [],
        [],
        [(cid, pb.CONTAINER_CREATED)],
        [(cid, pb.CONTAINER_RUNNING)],
        [(cid, pb.CONTAINER_EXITED)],
        [(cid, pb.CONTAINER_EXITED)],
        [],
        [],
    ]
    assert mine[1].pod_sandbox_status.network.ip  # started: it has its IP
    assert not mine[5].pod_sandbox_status.network.ip  # stopped: released
    stamps = [e.created_at for e in mine]
    assert stamps == sorted(stamps) and stamps[0] > 0


def test_a_failed_run_sends_no_sandbox_event(pods: CriClient, subscriber: Subscriber) -> None:
    # Refused by the kernel half-way through (the pod's record and namespaces existed).
    cfg = pod_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "99999999"})
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, cfg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    marker = run_pod(pods, pod_config())  # an event after it, to know the stream caught up
    seen = subscriber.wait_for(marker, pb.CONTAINER_STARTED_EVENT)
    assert cfg.metadata.name not in {ev.pod_sandbox_status.metadata.name for ev in seen}


def test_a_subscriber_that_never_reads_is_dropped_and_slows_nothing(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd, tmp_path: Path
) -> None:
    stalled = pods.runtime.GetContainerEvents(pb.GetEventsRequest(), timeout=300)
    stalled.initial_metadata()  # subscribed; never read from here on
    # Big pods, as kubelet's can be (annotations up to 256 KiB): each event carries them.
    annotations = {f"note{i}": "x" * (16 << 10) for i in range(12)}
    img = pod_images.busybox.reference
    for i in range(20):
        cfg = pod_config(f"busy-{i}-{uuid.uuid4().hex[:6]}", annotations=annotations)
        cfg.log_directory = str(tmp_path / "logs")
        # Each call must be answered well within its deadline: nothing waits for the reader.
        pod_id = pods.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=cfg), timeout=20
        ).pod_sandbox_id
        cid = create(pods, pod_id, cfg, container_config(img, command=["sleep", "60"]))
        start(pods, cid)
        pods.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=20)
        pods.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=20)
    assert "a subscriber fell" in pod_crispyd.log() and "dropping it" in pod_crispyd.log()
    # What was queued still comes, then the stream says to subscribe again.
    got = 0
    with pytest.raises(grpc.RpcError) as e:
        for _ in stalled:
            got += 1
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "subscribe again" in (e.value.details() or "")
    assert 0 < got < 20 * 8
    # A new subscriber is served as usual.
    fresh = Subscriber(pods)
    try:
        pod_id = run_pod(pods, pod_config())
        fresh.wait_for(pod_id, pb.CONTAINER_STARTED_EVENT)
    finally:
        fresh.close()


def test_an_infra_container_that_dies_is_an_event(pods: CriClient, subscriber: Subscriber) -> None:
    """Nobody asks for the pod's status: the STOPPED event alone tells kubelet."""
    pod_id = run_pod(pods, pod_config(pid=pb.POD))
    _, info = pod_status_info(pods, pod_id)
    os.kill(info["pid"], signal.SIGKILL)  # the pause process of this test's own pod
    seen = subscriber.wait_for(pod_id, pb.CONTAINER_STOPPED_EVENT)
    (stopped,) = [
        e
        for e in seen
        if e.container_id == pod_id and e.container_event_type == pb.CONTAINER_STOPPED_EVENT
    ]
    assert stopped.pod_sandbox_status.state == pb.SANDBOX_NOTREADY
