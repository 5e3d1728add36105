"""Container and pod stats against real containers (cgroup v1 here) and a real pod network."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import container_config, new_pod, run, wait_state
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

MiB = 1 << 20


def cstats(cri: CriClient, cid: str) -> pb.ContainerStats:
    return cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats


def pstats(cri: CriClient, pod_id: str) -> pb.PodSandboxStats:
    return cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats


def running(cri: CriClient, pod: tuple[str, pb.PodSandboxConfig], img: str, script: str) -> str:
    cid = run(cri, pod[0], pod[1], container_config(img, command=["sh", "-c", script]))
    wait_state(cri, cid, pb.CONTAINER_RUNNING)
    return cid


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig]:
    return new_pod(pods, tmp_path / "logs")


def test_cpu_usage_rises_and_has_a_rate(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    cid = running(pods, pod, pod_images.busybox.reference, "while :; do :; done")
    first = cstats(pods, cid)
    time.sleep(1.0)
    second = cstats(pods, cid)
    assert first.attributes.id == cid and first.attributes.metadata.name
    a, b = first.cpu.usage_core_nano_seconds.value, second.cpu.usage_core_nano_seconds.value
    assert b > a > 0
    # a busy loop uses most of a core: well above a tenth of one
    assert second.cpu.usage_nano_cores.value > 100_000_000
    assert second.cpu.timestamp > first.cpu.timestamp


def test_memory_working_set_of_a_64_mib_allocation(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    # not `sleep` last: ash would exec it in place of the shell, freeing the allocation
    script = "x=$(head -c 70000000 /dev/zero | tr '\\0' a); sleep 1000; echo ${#x}"
    cid = running(pods, pod, pod_images.busybox.reference, script)
    deadline = time.monotonic() + 20
    while True:
        st = cstats(pods, cid)
        if st.memory.working_set_bytes.value > 64 * MiB or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert st.memory.working_set_bytes.value > 64 * MiB
    assert st.memory.usage_bytes.value >= st.memory.working_set_bytes.value
    assert st.memory.rss_bytes.value > 60 * MiB
    assert st.memory.page_faults.value > 0


def test_writable_layer_grows_by_what_the_container_writes(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    img = pod_images.busybox.reference
    idle = running(pods, pod, img, "sleep 1000")
    script = "head -c 10485760 /dev/urandom > /ten-mib; sync; echo done; sleep 1000"
    writer = running(pods, pod, img, script)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        path = Path(
            pods.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=writer)
            ).status.log_path
        )
        if path.exists() and "done" in path.read_text():
            break
        time.sleep(0.1)
    base = cstats(pods, idle).writable_layer
    grown = cstats(pods, writer).writable_layer
    delta = grown.used_bytes.value - base.used_bytes.value
    assert 10 * MiB <= delta < 11 * MiB
    assert grown.inodes_used.value >= base.inodes_used.value + 1
    assert grown.fs_id.mountpoint


def test_pod_stats_sum_their_containers_and_count_network_bytes(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    img = pod_images.busybox.reference
    burner = running(pods, pod, img, "while :; do :; done")
    sink = running(pods, pod, img, "nc -l -p 7171 > /dev/null; sleep 1000")
    status = pods.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod[0]))
    ip = status.status.network.ip
    before = pstats(pods, pod[0])
    # 2 MiB sent from the host to the pod's IP (loopback-free, but only into the test's pod)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((ip, 7171), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.sendall(b"x" * (2 * MiB))
    time.sleep(0.5)
    after = pstats(pods, pod[0])
    assert after.attributes.id == pod[0]
    names = {c.attributes.id for c in after.linux.containers}
    assert names == {burner, sink}
    pod_cpu = after.linux.cpu.usage_core_nano_seconds.value
    assert pod_cpu >= sum(c.cpu.usage_core_nano_seconds.value for c in after.linux.containers)
    pod_mem = after.linux.memory.usage_bytes.value
    assert pod_mem >= sum(c.memory.usage_bytes.value for c in after.linux.containers)
    assert after.linux.process.process_count.value >= 2
    eth0 = {i.name: i for i in after.linux.network.interfaces}["eth0"]
    eth0_before = {i.name: i for i in before.linux.network.interfaces}["eth0"]
    assert eth0.rx_bytes.value - eth0_before.rx_bytes.value >= 2 * MiB
    assert after.linux.network.default_interface.name == "eth0"
    assert "lo" not in {i.name for i in after.linux.network.interfaces}


def test_list_stats_filters_and_unknown_ids(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    cid = running(pods, pod, pod_images.busybox.reference, "sleep 1000")
    listed = pods.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod[0]))
    ).stats
    assert [s.attributes.id for s in listed] == [cid]
    by_id = pods.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(id=cid[:12]))
    ).stats
    assert [s.attributes.id for s in by_id] == [cid]
    pod_list = pods.runtime.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=pod[0]))
    ).stats
    assert [s.attributes.id for s in pod_list] == [pod[0]]
    for call in (
        lambda: cstats(pods, "d" * 64),
        lambda: pstats(pods, "d" * 64),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_exited_container_has_no_stats_of_its_own_but_is_listed(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    cid = running(pods, pod, pod_images.busybox.reference, "echo data > /f; sleep 1000")
    assert cstats(pods, cid).cpu.usage_core_nano_seconds.value > 0
    pods.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    wait_state(pods, cid, pb.CONTAINER_EXITED)
    with pytest.raises(grpc.RpcError) as e:
        cstats(pods, cid)  # as containerd: its cgroup is gone, so no figures from it
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exited" in (e.value.details() or "")
    # Listed, as kubelet's CRI stats provider keeps the latest container of each name
    # even once exited: its writable layer, no CPU or memory.
    (listed,) = pods.runtime.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(id=cid))
    ).stats
    assert listed.attributes.id == cid
    assert listed.writable_layer.used_bytes.value > 0
    assert not listed.HasField("cpu") and not listed.HasField("memory")


def test_metric_descriptors_and_pod_metrics(
    pods: CriClient, pod: tuple[str, pb.PodSandboxConfig], pod_images: TestImages
) -> None:
    cid = running(pods, pod, pod_images.busybox.reference, "sleep 1000")
    names = {
        d.name: d
        for d in pods.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
    }
    for want in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
    ):
        assert want in names and names[want].label_keys
    metrics = pods.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    mine = next(m for m in metrics if m.pod_sandbox_id == pod[0])
    ctr = next(c for c in mine.container_metrics if c.container_id == cid)
    got = {m.name: m for m in ctr.metrics}
    ws = got["container_memory_working_set_bytes"]
    assert ws.value.value > 0 and ws.metric_type == pb.GAUGE
    assert len(ws.label_values) == len(names[ws.name].label_keys)
    assert any(m.name == "container_network_receive_bytes_total" for m in mine.metrics)
