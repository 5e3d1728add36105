"""crispyd SIGKILLed in the middle of stopping or removing a pod, and pods whose config or
record holds values no path, argv or env var can carry.

The kills happen at exact step boundaries through a test-only hook: crispyd started with
CRISPY_TEST_KILL_AT=<step> in its environment SIGKILLs itself when it reaches that step
(crispy/testhook.py); the restarted crispyd runs without it.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.store import Store
from crispy.store.db import PodRow
from crispy.system import cgroups
from support.daemon import Crispyd
from support.pods import (
    TestNetwork,
    host_state,
    pod_config,
    pod_daemon_config,
    pod_status,
    remove_all_pods,
    remove_pod,
    run_pod,
    stop_pod,
    wait_shim,
)
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

KILL_AT = "CRISPY_TEST_KILL_AT"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TestNetwork]:
    n = TestNetwork.random("k", 248, tmp_path / "ipam")
    yield n
    n.remove_bridge()


@pytest.fixture
def daemon(tmp_path: Path, net: TestNetwork, test_images: TestImages) -> Iterator[Crispyd]:
    base = tmp_path / "d"
    d = Crispyd(base, config=pod_daemon_config(base, net, test_images.pause.reference))
    (base / "net.d" / "10-test.conflist").write_text(net.conflist())
    yield d
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(grpc.RpcError), d.client() as c:
            remove_all_pods(c)
    d.stop()


def _start_killing_at(d: Crispyd, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KILL_AT, step)
    try:
        d.start()
    finally:
        monkeypatch.delenv(KILL_AT)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _expect_killed(d: Crispyd, call: object) -> None:
    """`call` dies with crispyd (UNAVAILABLE), and crispyd was SIGKILLed by the hook."""
    with pytest.raises(grpc.RpcError) as e:
        call()  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert d.wait_exit(20) == -9, d.log()


def _assert_clean(d: Crispyd, net: TestNetwork, pod_id: str, info: dict, baseline: dict) -> None:
    with d.client() as c:
        assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not (d.state / "pods" / pod_id).exists()
    assert not (d.state / "ns" / pod_id).exists()
    assert host_state(d.base, net)["mounts"] == baseline["mounts"]
    assert cgroups.exists_anywhere(info["cgroupPath"]) == []
    assert net.allocated() == set()
    assert not _alive(info["shimPid"])
    if info["pid"]:
        assert not _alive(info["pid"])
    assert "recovery failed" not in d.log()


def test_remove_killed_after_the_shim_exited_is_finished(
    daemon: Crispyd, net: TestNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon
    _start_killing_at(d, "remove:shim-stopped", monkeypatch)
    baseline = host_state(d.base, net)
    with d.client(timeout=60) as c:
        pod_id = run_pod(c, pod_config(name="shared", pid=pb.POD))
        info = wait_shim(c, pod_id)
        assert info["pid"] and _alive(info["pid"])
        _expect_killed(d, lambda: remove_pod(c, pod_id))
    # killed where the old code left a pod nothing could stop: the shim gone, the row kept
    assert _wait_dead(info["shimPid"])
    assert (d.state / "pods" / pod_id).exists()

    d.start()  # recovery finishes the removal: no shim needed
    assert "finishing its removal" in d.log()
    with d.client(timeout=60) as c:
        assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        stop_pod(c, pod_id)  # what kubelet retries: answered, not UNAVAILABLE
        remove_pod(c, pod_id)
    _assert_clean(d, net, pod_id, info, baseline)


def test_a_pod_whose_shim_died_can_be_stopped_and_removed(
    daemon: Crispyd, net: TestNetwork
) -> None:
    d = daemon.start()
    baseline = host_state(d.base, net)
    with d.client(timeout=60) as c:
        pod_id = run_pod(c, pod_config(name="orphan", pid=pb.POD))
        info = wait_shim(c, pod_id)
        os.kill(info["shimPid"], 9)  # the shim this test's pod got
        assert _wait_dead(info["shimPid"])
        stop_pod(c, pod_id)
        assert not _alive(info["pid"])  # the infra container was killed without its shim
        status, _ = pod_status(c, pod_id)
        assert status.state == pb.SANDBOX_NOTREADY
        remove_pod(c, pod_id)
    _assert_clean(d, net, pod_id, info, baseline)


@pytest.mark.parametrize("pid", [pb.CONTAINER, pb.POD], ids=["plain", "shared"])
def test_stop_killed_after_cni_del_leaves_a_not_ready_pod(
    daemon: Crispyd,
    net: TestNetwork,
    monkeypatch: pytest.MonkeyPatch,
    pid: pb.NamespaceMode.ValueType,
) -> None:
    d = daemon
    _start_killing_at(d, "stop:cni-deleted", monkeypatch)
    baseline = host_state(d.base, net)
    with d.client(timeout=60) as c:
        pod_id = run_pod(c, pod_config(name="stopping", pid=pid))
        info = wait_shim(c, pod_id)
        status, _ = pod_status(c, pod_id)
        assert status.network.ip in net.allocated()
        _expect_killed(d, lambda: stop_pod(c, pod_id))
    assert net.allocated() == set()  # CNI DEL ran: the lease is free for another pod

    d.start()
    with d.client(timeout=60) as c:
        status, _ = pod_status(c, pod_id)
        assert status.state == pb.SANDBOX_NOTREADY
        assert status.network.ip == ""
        assert not (d.state / "ns" / pod_id / "net").exists()  # recovery finished the stop
        assert "finishing its stop" in d.log()
        if info["pid"]:
            assert not _alive(info["pid"])
        stop_pod(c, pod_id)
        remove_pod(c, pod_id)
    _assert_clean(d, net, pod_id, info, baseline)


# -- values that can't reach a path, an argv or an env var -------------------------------------


def _bad_config(field: str, value: str) -> pb.PodSandboxConfig:
    cfg = pod_config(name="bad")
    if field.startswith("metadata."):
        setattr(cfg.metadata, field.split(".", 1)[1], value)
    elif field == "cgroup_parent":
        cfg.linux.cgroup_parent = value
    elif field == "log_directory":
        cfg.log_directory = value
    elif field == "port_mappings[0].host_ip":
        cfg.port_mappings.append(
            pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=18080, host_ip=value)
        )
    elif field == "annotations":
        cfg.annotations["example.com/x"] = value
    elif field == "annotations-key":
        cfg.annotations[value] = "x"
    elif field == "sysctls":
        cfg.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = value
    elif field == "sysctls-key":
        cfg.linux.sysctls[value] = "1"
    else:
        raise AssertionError(field)
    return cfg


BAD = [
    ("metadata.name", "a\x00b", "metadata.name"),
    ("metadata.name", "a\nb", "metadata.name"),
    ("metadata.name", "..", "metadata.name"),
    ("metadata.name", "a/../b", "metadata.name"),
    ("metadata.name", "a;K8S_POD_NAME=b", "metadata.name"),
    ("metadata.namespace", "ns\x00", "metadata.namespace"),
    ("metadata.namespace", "ns\n", "metadata.namespace"),
    ("metadata.uid", "u\x00id", "metadata.uid"),
    ("metadata.uid", "u\nid", "metadata.uid"),
    ("cgroup_parent", "/a\x00b", "cgroup_parent"),
    ("cgroup_parent", "/a\nb", "cgroup_parent"),
    ("cgroup_parent", "/a/../../b", "cgroup_parent"),
    ("log_directory", "/var/log/pods/a\x00b", "log_directory"),
    ("log_directory", "/var/log/pods/a\nb", "log_directory"),
    ("log_directory", "/var/log/pods/../../etc", "log_directory"),
    ("log_directory", "relative/dir", "log_directory"),
    ("port_mappings[0].host_ip", "127.0.0.1\x00", "port_mappings[0].host_ip"),
    ("port_mappings[0].host_ip", "127.0.0.1\n", "port_mappings[0].host_ip"),
    ("port_mappings[0].host_ip", "not-an-ip", "port_mappings[0].host_ip"),
    ("annotations", "v\x00", "example.com/x"),
    ("annotations-key", "k\x00", "annotations"),
    ("sysctls", "1\x00", "net.ipv4.ip_unprivileged_port_start"),
    ("sysctls", "1\nkernel.core_pattern=|/x", "net.ipv4.ip_unprivileged_port_start"),
    ("sysctls-key", "net.ipv4.\x00x", "sysctl"),
    ("sysctls-key", "net.ipv4.conf/../../x", "sysctl"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_pod_config_strings_are_refused_before_anything_is_made(
    pods: CriClient, pod_crispyd: Crispyd, field: str, value: str, named: str
) -> None:
    state = pod_crispyd.state
    before = set(os.listdir(state / "pods")) if (state / "pods").exists() else set()
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, _bad_config(field, value))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert named in (e.value.details() or "")
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    after = set(os.listdir(state / "pods")) if (state / "pods").exists() else set()
    assert after == before


def test_an_out_of_range_sysctl_value_names_the_key(pods: CriClient) -> None:
    cfg = pod_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "99999999"})
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, cfg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "net.ipv4.ip_unprivileged_port_start" in (e.value.details() or "")
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items


def test_intermediate_cgroups_crispy_made_are_removed_and_kubelets_are_kept(
    pods: CriClient,
) -> None:
    top = f"/crispy-test-{os.getpid()}-{random.randrange(1 << 30)}"
    kubelet = f"{top}/kubelet"
    cgroups.create(kubelet)  # what kubelet made before the pod
    try:
        pod_id = run_pod(pods, pod_config(cgroup_parent=f"{kubelet}/a/b/c"))
        assert cgroups.exists_anywhere(f"{kubelet}/a/b/c")
        remove_pod(pods, pod_id)
        assert cgroups.exists_anywhere(f"{kubelet}/a") == []
        assert cgroups.exists_anywhere(kubelet)
    finally:
        cgroups.remove(top)


def _bad_row(pod_id: str, state: str, d: Crispyd) -> PodRow:
    cfg = pod_config(name="n\x00ul", namespace="ns\x00", annotations={"a": "\x00"})
    cfg.metadata.uid = "u\x00"
    cfg.port_mappings.append(
        pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=18081, host_ip="1\x00")
    )
    cfg.log_directory = "/tmp/x\x00y"
    cfg.linux.cgroup_parent = "/x\x00y"
    return PodRow(
        id=pod_id,
        name=f"n\x00ul_ns_{pod_id}_0",
        state=state,
        created_at=time.time_ns(),
        runtime_handler="runc",
        config=cfg.SerializeToString(),
        info={
            "netns": str(d.state / "ns" / pod_id / "net"),
            "utsns": str(d.state / "ns" / pod_id / "uts"),
            "ipcns": str(d.state / "ns" / pod_id / "ipc"),
            "network": True,
            "ips": [],
            "cgroup_parent": "/x\x00y",
            "cgroup_path": "/x\x00y",
            "cgroup_made": True,
            "shm": str(d.state / "pods" / pod_id / "shm"),
            "shim_pid": 0,
            "infra": None,
        },
    )


def test_a_record_holding_bad_values_is_still_removable(daemon: Crispyd) -> None:
    d = daemon.start()
    d.stop()
    creating, ready = "c" * 64, "e" * 64
    store = Store(str(d.root / "crispy.db"))
    try:
        store.add_pod(_bad_row(creating, "creating", d))
        store.add_pod(_bad_row(ready, "ready", d))
    finally:
        store.close()
    d.start()
    assert "recovery failed" not in d.log()
    with d.client(timeout=60) as c:
        ids = [p.id for p in c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
        assert ids == [ready]  # the half-made one was rolled back
        stop_pod(c, ready)
        remove_pod(c, ready)
        assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    d.stop()
    store = Store(str(d.root / "crispy.db"))
    try:
        assert store.get_pod(creating) is None and store.get_pod(ready) is None
    finally:
        store.close()
