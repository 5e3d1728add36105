"""crispyd over its real socket: the RPCs it answers, locking, signals, bad configs."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import grpc
import pytest

from crispy.api import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd, run_crispyd

IMPLEMENTED = {
    "Version",
    "Status",
    "RuntimeConfig",
    "UpdateRuntimeConfig",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ContainerStatus",
    "ListContainers",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "GetContainerEvents",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "PortForward",
    "Exec",
    "Attach",
}


def test_version(cri: CriClient) -> None:
    v = cri.runtime.Version(pb.VersionRequest(version="v1"), timeout=5)
    assert v.runtime_name == "crispy"
    assert v.runtime_api_version == "v1"
    assert v.version == "0.1.0"
    from crispy import __version__

    assert v.runtime_version == __version__


def test_status_reports_runtime_ready_and_network_not_ready(cri: CriClient) -> None:
    s = cri.runtime.Status(pb.StatusRequest(), timeout=5)
    conds = {c.type: c for c in s.status.conditions}
    assert conds["RuntimeReady"].status is True
    assert conds["NetworkReady"].status is False
    assert conds["NetworkReady"].reason == "NetworkPluginNotReady"
    assert "no network config found" in conds["NetworkReady"].message
    assert dict(s.info) == {}  # only verbose asks for info
    names = [h.name for h in s.runtime_handlers]
    assert names[0] == "" and "runc" in names
    default = s.runtime_handlers[0]
    runc = next(h for h in s.runtime_handlers if h.name == "runc")
    assert default.features == runc.features
    # SupplementalGroupsPolicy=Strict is honoured (tests/test_container_spec_e2e.py)
    assert s.features.supplemental_groups_policy is True


def test_status_verbose_shows_effective_config(cri: CriClient, crispyd: Crispyd) -> None:
    s = cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
    cfg = json.loads(s.info["config"])
    assert cfg["root"] == str(crispyd.root)
    assert cfg["state"] == str(crispyd.state)
    assert cfg["cni"]["conf_dir"] == str(crispyd.base / "net.d")
    assert cfg["runtimes"]["runc"]["root"] == str(crispyd.state / "runc")
    runtime = json.loads(s.info["runtime"])
    assert runtime["name"] == "crispy"
    assert {h["name"] for h in runtime["handlers"]} >= {"runc"}
    assert runtime["cgroupDriver"] in ("cgroupfs", "systemd")


def test_network_ready_once_a_cni_config_appears(cri: CriClient, crispyd: Crispyd) -> None:
    conf = crispyd.base / "net.d" / "10-test.conflist"
    conf.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "testnet",
                "plugins": [{"type": "bridge"}, {"type": "portmap"}],
            }
        )
    )
    try:
        s = cri.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
        net = next(c for c in s.status.conditions if c.type == "NetworkReady")
        assert net.status is True, net.message
        assert json.loads(s.info["cniconfig"])["network"]["name"] == "testnet"
        # A plugin whose binary is missing makes the network not ready, saying which.
        conf.write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nosuch"}]})
        )
        s = cri.runtime.Status(pb.StatusRequest(), timeout=5)
        net = next(c for c in s.status.conditions if c.type == "NetworkReady")
        assert net.status is False and "nosuch" in net.message
    finally:
        conf.unlink()


def test_runtime_config_reports_the_cgroup_driver(cri: CriClient) -> None:
    r = cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=5)
    expected = pb.SYSTEMD if os.path.isdir("/run/systemd/system") else pb.CGROUPFS
    assert r.linux.cgroup_driver == expected


def _update_cidr(client: CriClient, cidr: str) -> None:
    client.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))
        ),
        timeout=5,
    )


def _pod_cidr(client: CriClient) -> str:
    s = client.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
    return str(json.loads(s.info["cniconfig"])["podCIDR"])


def test_update_runtime_config_keeps_pod_cidr_across_restart(daemon_dir: Path) -> None:
    d = Crispyd(daemon_dir).start()
    try:
        with d.client() as c:
            _update_cidr(c, "10.244.1.0/24,fd00:10:244:1::/64")
            assert _pod_cidr(c) == "10.244.1.0/24,fd00:10:244:1::/64"
            _update_cidr(c, "")  # an empty CIDR keeps the one we have
            assert _pod_cidr(c) == "10.244.1.0/24,fd00:10:244:1::/64"
            with pytest.raises(grpc.RpcError) as e:
                _update_cidr(c, "10.244.1.0/33")
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "10.244.1.0/33" in e.value.details()
        d.kill()  # no clean shutdown: the CIDR must already be on disk
        d.start()
        with d.client() as c:
            assert _pod_cidr(c) == "10.244.1.0/24,fd00:10:244:1::/64"
    finally:
        d.stop()


def _empty_call(client: CriClient, service: str, method: str) -> None:
    stub = client.runtime if service == "RuntimeService" else client.image
    desc = (RUNTIME_SERVICE if service == "RuntimeService" else IMAGE_SERVICE).methods_by_name[
        method
    ]
    request = getattr(pb, desc.input_type.name)()
    call = getattr(stub, method)
    if desc.server_streaming:
        list(call(request, timeout=5))
    else:
        call(request, timeout=5)


UNIMPLEMENTED = [
    (svc.name, m.name)
    for svc in (RUNTIME_SERVICE, IMAGE_SERVICE)
    for m in svc.methods
    if m.name not in IMPLEMENTED
]


@pytest.mark.parametrize(("service", "method"), UNIMPLEMENTED)
def test_other_rpcs_are_unimplemented_by_name(cri: CriClient, service: str, method: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _empty_call(cri, service, method)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"{service}.{method}" in e.value.details()


def test_socket_is_0660(crispyd: Crispyd) -> None:
    st = os.stat(crispyd.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_second_daemon_on_same_state_dir_refuses(crispyd: Crispyd, daemon_dir: Path) -> None:
    # Same state and root as the session daemon, a different socket.
    other = Crispyd(daemon_dir)
    cmd = other.command()
    cmd[cmd.index("--state") + 1] = str(crispyd.state)
    cmd[cmd.index("--root") + 1] = str(crispyd.root)
    import subprocess

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert "already running" in r.stderr and str(crispyd.state) in r.stderr
    assert str(crispyd.proc.pid if crispyd.proc else "") in r.stderr
    assert not other.socket.exists()
    with crispyd.client() as c:  # the first one is unharmed
        assert c.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "crispy"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_removes_socket_and_exits_zero(daemon_dir: Path, sig: int) -> None:
    d = Crispyd(daemon_dir).start()
    assert d.socket.exists()
    assert d.stop(sig) == 0
    assert not d.socket.exists()
    # the lock went with the process: a new daemon starts on the same dirs
    d.start()
    assert d.stop() == 0


def test_restart_after_kill_replaces_stale_socket(daemon_dir: Path) -> None:
    d = Crispyd(daemon_dir).start()
    d.kill()
    assert d.socket.exists()  # left behind by the crash
    d.start()
    with d.client() as c:
        assert c.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "crispy"
    assert d.stop() == 0


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ("[cni]\nconf_dirs = '/etc/cni/net.d'\n", "unknown key 'cni.conf_dirs'"),
        ("[streaming]\nport = 'ten'\n", "streaming.port"),
        ("log_level = 3\n", "log_level"),
        ("default_runtime = 'nosuch'\n", "default_runtime"),
        ("root = [\n", "config file"),
    ],
)
def test_bad_config_stops_startup_naming_the_key(daemon_dir: Path, config: str, names: str) -> None:
    r = run_crispyd(daemon_dir, config=config)
    assert r.returncode == 2
    assert names in r.stderr
    assert not (daemon_dir / "crispy.sock").exists()
    assert not (daemon_dir / "state").exists()


def test_a_non_socket_at_the_socket_path_is_not_replaced(daemon_dir: Path) -> None:
    (daemon_dir / "crispy.sock").write_text("precious")
    r = run_crispyd(daemon_dir)
    assert r.returncode == 1
    assert "not a socket" in r.stderr
    assert (daemon_dir / "crispy.sock").read_text() == "precious"


def test_a_newer_state_database_is_refused(daemon_dir: Path) -> None:
    import sqlite3

    (daemon_dir / "root").mkdir()
    conn = sqlite3.connect(daemon_dir / "root" / "crispy.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    r = run_crispyd(daemon_dir)
    assert r.returncode == 1
    assert "newer than this crispy understands" in r.stderr
    assert not (daemon_dir / "crispy.sock").exists()
