"""ListMetricDescriptors and ListPodSandboxMetrics through the real daemon: a pod whose
container burns CPU under a quota, holds memory, writes and reads files, and takes TCP
traffic from the host; every family critest expects has a value, or is listed below with
the reason this kernel can't give it (and the test checks that reason holds)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.system.cgroups import CGROUP_ROOT, CgroupVersion, cgroup_version
from support.containers import container_config, new_pod, run, wait_state
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

MiB = 1 << 20
PORT = 7272
SENT = 1 * MiB

# What cri-tools' critest (pkg/validate/pod.go) expects of ListMetricDescriptors: the
# families kubelet's /metrics/cadvisor serves with CRI-O and cAdvisor.
CRITEST_NAMES = {
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
}

BLKIO = (
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
)
PRESSURE = tuple(n for n in CRITEST_NAMES if n.startswith("container_pressure_"))


def v1_file(cgroups: dict[str, str], controller: str, name: str) -> str:
    return os.path.join(CGROUP_ROOT, controller, cgroups[controller].lstrip("/"), name)


def no_blkio_device(cgroups: dict[str, str]) -> bool:
    # The blkio (v1) or io (v2) figures list no device for the container: nothing to label.
    if "" in cgroups and cgroup_version() is CgroupVersion.V2:
        stat = os.path.join(CGROUP_ROOT, cgroups[""].lstrip("/"), "io.stat")
        return not os.path.exists(stat) or not Path(stat).read_text().strip()
    f = v1_file(cgroups, "blkio", "blkio.throttle.io_service_bytes_recursive")
    return all(line.startswith("Total") for line in Path(f).read_text().splitlines())


def no_pressure(cgroups: dict[str, str]) -> bool:
    # PSI lives in v2 only: a v1-only host (no unified mount holding the container) has none.
    if cgroup_version() is CgroupVersion.V2:
        d = os.path.join(CGROUP_ROOT, cgroups[""].lstrip("/"))
    else:
        d = os.path.join(CGROUP_ROOT, "unified", cgroups.get("", "/").lstrip("/"))
    return not os.path.exists(os.path.join(d, "cpu.pressure"))


def no_hugetlb_high_water(cgroups: dict[str, str]) -> bool:
    # v2's hugetlb controller keeps no maximum; v1's hugetlb.<size>.max_usage_in_bytes does.
    return cgroup_version() is CgroupVersion.V2


# Families this kernel may not give, the reason, and the check that the reason holds for
# the running container's cgroups (from /proc/<pid>/cgroup) — an entry excuses a missing
# value only when its check is true.
CANT_GIVE: dict[str, tuple[str, Callable[[dict[str, str]], bool]]] = {
    # Since 6.10, v1 blkio counts requests only on a disk some cgroup set a throttle rule
    # for (blk-throttle starts lazily); v2's io.stat always counts.
    **{n: ("no per-device blkio lines", no_blkio_device) for n in BLKIO},
    # PSI is v2's: a v1 host without a unified mount holding the container has none.
    **{n: ("no PSI files for the cgroup", no_pressure) for n in PRESSURE},
    "container_hugetlb_max_usage_bytes": ("v2 hugetlb has no max usage", no_hugetlb_high_water),
}


def proc_cgroups(pid: int) -> dict[str, str]:
    """controller -> path from /proc/<pid>/cgroup ("" for the v2 line)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def descriptors(cri: CriClient) -> dict[str, pb.MetricDescriptor]:
    resp = cri.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())
    return {d.name: d for d in resp.descriptors}


def pod_metrics(cri: CriClient, pod_id: str) -> pb.PodSandboxMetrics:
    resp = cri.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    return next(m for m in resp.pod_metrics if m.pod_sandbox_id == pod_id)


def by_name(metrics: list[pb.Metric]) -> dict[str, list[pb.Metric]]:
    out: dict[str, list[pb.Metric]] = {}
    for m in metrics:
        out.setdefault(m.name, []).append(m)
    return out


def one(found: dict[str, list[pb.Metric]], name: str) -> int:
    (m,) = found[name]
    return int(m.value.value)


def test_descriptors_are_the_cadvisor_families_critest_expects(pods: CriClient) -> None:
    resp = pods.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest())
    names = [d.name for d in resp.descriptors]
    assert len(names) == len(set(names))
    assert set(names) == CRITEST_NAMES
    for d in resp.descriptors:
        assert d.help and list(d.label_keys[:6]) == [
            "container",
            "id",
            "image",
            "name",
            "namespace",
            "pod",
        ], d.name
    got = {d.name: list(d.label_keys[6:]) for d in resp.descriptors}
    assert got["container_cpu_usage_seconds_total"] == ["cpu"]
    assert got["container_network_receive_packets_total"] == ["interface"]
    assert got["container_blkio_device_usage_total"] == ["device", "major", "minor", "operation"]
    assert got["container_memory_failures_total"] == ["failure_type", "scope"]
    assert got["container_fs_limit_bytes"] == ["device"]
    assert got["container_ulimits_soft"] == ["ulimit"]
    assert got["container_hugetlb_usage_bytes"] == ["pagesize"]


# Background CPU burner, 24 MiB held by the shell, a file written and read back with sync,
# a listener for the host's traffic and one that keeps its socket open throughout.
SCRIPT = (
    "(while :; do :; done) & "
    "x=$(head -c 25165824 /dev/zero | tr '\\0' a); "
    "mkdir -p /data && for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/urandom "
    "> /data/f$i; done; sync; cat /data/* > /dev/null; "
    f"(nc -l -p {PORT} > /data/got; sleep 1000) & nc -l -p {PORT + 1} & "
    "echo ready; sleep 1000; echo ${#x}"
)


def connect(addr: tuple[str, int], timeout: float = 20) -> socket.socket:
    """The background `nc -l` may not listen yet when "ready" is logged (the shell runs at
    a fifth of a core): retry a refused connection until it does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(addr, timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_every_family_has_a_value_for_a_pod_under_load(
    pods: CriClient, tmp_path: Path, pod_images: TestImages
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    resources = pb.LinuxContainerResources(
        cpu_period=100_000,
        cpu_quota=20_000,  # a fifth of a core: the busy loop is throttled every period
        cpu_shares=512,
        memory_limit_in_bytes=256 * MiB,
        memory_swap_limit_in_bytes=256 * MiB,
    )
    cfg = container_config(
        pod_images.busybox.reference,
        name="worker",
        command=["sh", "-c", SCRIPT],
        resources=resources,
    )
    cid = run(pods, pod_id, pod_cfg, cfg)
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    status = pods.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True))
    pid = json.loads(status.info["info"])["pid"]
    log = Path(status.status.log_path)
    deadline = time.monotonic() + 30
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the container never got ready"
        time.sleep(0.1)

    ip = pods.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    ).status.network.ip
    with connect((ip, PORT)) as conn:
        conn.sendall(b"y" * SENT)
    time.sleep(1.5)  # a few CFS periods more, and the listener's file written

    descs = descriptors(pods)
    got = pod_metrics(pods, pod_id)
    pod_level = by_name(list(got.metrics))
    (ctr,) = got.container_metrics
    assert ctr.container_id == cid
    ctr_level = by_name(list(ctr.metrics))

    # Every family has a value at the pod's or the container's level, or a reason to have
    # none that holds here.
    cgroups = proc_cgroups(pid)
    missing = set(descs) - set(pod_level) - set(ctr_level)
    unexcused = {n for n in missing if n not in CANT_GIVE or not CANT_GIVE[n][1](cgroups)}
    assert not unexcused, f"no value for {sorted(unexcused)}"
    # Every metric carries as many label values as its descriptor has keys.
    for m in [*got.metrics, *ctr.metrics]:
        assert len(m.label_values) == len(descs[m.name].label_keys), m.name
        # cAdvisor's counters: the *_total names but a gauge of inodes, and failcnt
        counter = m.name.endswith("_total") != (m.name == "container_fs_inodes_total") or (
            m.name == "container_memory_failcnt"
        )
        expect = pb.COUNTER if counter else pb.GAUGE
        assert m.metric_type == expect, m.name

    # The figures mean what the load did.
    assert one(ctr_level, "container_spec_cpu_period") == 100_000
    assert one(ctr_level, "container_spec_cpu_quota") == 20_000
    assert one(ctr_level, "container_spec_cpu_shares") == 512
    assert one(ctr_level, "container_spec_memory_limit_bytes") == 256 * MiB
    assert one(ctr_level, "container_cpu_cfs_periods_total") > 10
    assert one(ctr_level, "container_cpu_cfs_throttled_periods_total") > 5
    assert one(ctr_level, "container_memory_working_set_bytes") > 24 * MiB
    assert one(ctr_level, "container_memory_max_usage_bytes") >= one(
        ctr_level, "container_memory_usage_bytes"
    )
    assert one(ctr_level, "container_memory_rss") > 24 * MiB
    assert one(ctr_level, "container_processes") >= 4  # sh, the burner, nc, nc (and sleeps)
    assert one(ctr_level, "container_threads") >= one(ctr_level, "container_processes")
    assert one(ctr_level, "container_sockets") >= 1  # the second nc's
    assert one(ctr_level, "container_file_descriptors") > one(ctr_level, "container_sockets")
    assert one(ctr_level, "container_ulimits_soft") > 0
    (usage,) = ctr_level["container_fs_usage_bytes"]
    assert usage.value.value >= 8 * MiB  # the written files, in the writable layer
    vfs = os.statvfs(tmp_path)  # the test's dirs and crispyd's share this filesystem here
    inodes = one(ctr_level, "container_fs_inodes_total")
    assert 0 < one(ctr_level, "container_fs_inodes_free") < inodes
    assert one(ctr_level, "container_fs_limit_bytes") > 0
    if os.stat(tmp_path).st_dev == os.stat(str(tmp_path.parent)).st_dev:
        assert inodes == vfs.f_files
    now = time.time()
    assert abs(one(ctr_level, "container_last_seen") - now) < 30
    assert abs(one(ctr_level, "container_start_time_seconds") - now) < 120
    failures = {
        tuple(m.label_values[6:]): m.value.value
        for m in ctr_level["container_memory_failures_total"]
    }
    assert failures[("pgfault", "hierarchy")] > 0
    assert set(failures) == {
        ("pgfault", "container"),
        ("pgmajfault", "container"),
        ("pgfault", "hierarchy"),
        ("pgmajfault", "hierarchy"),
    }
    cpu = ctr_level["container_cpu_usage_seconds_total"][0]
    assert cpu.label_values[0] == "worker" and cpu.label_values[1] == cid
    assert cpu.label_values[6] == "total"

    # Pod level: the pod's cgroup holds the container; its network counted the traffic.
    assert one(pod_level, "container_memory_usage_bytes") >= one(
        ctr_level, "container_memory_usage_bytes"
    )
    assert one(pod_level, "container_processes") >= one(ctr_level, "container_processes")
    eth0 = {
        m.name: m.value.value
        for m in got.metrics
        if m.name.startswith("container_network_") and m.label_values[6] == "eth0"
    }
    assert eth0["container_network_receive_bytes_total"] >= SENT
    assert eth0["container_network_receive_packets_total"] > SENT // 65536
    assert eth0["container_network_transmit_packets_total"] > 0  # the ACKs
    assert eth0["container_network_receive_packets_dropped_total"] >= 0
    labels = got.metrics[0].label_values
    assert labels[:6] == ["", pod_id, "", "", pod_cfg.metadata.namespace, pod_cfg.metadata.name]
