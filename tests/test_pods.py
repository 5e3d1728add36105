"""Pod sandboxes against the real daemon: namespaces, CNI, files, cgroups, idempotence."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.daemon import Crispyd
from support.pods import (
    TestNetwork,
    connect_script,
    host_state,
    pod_config,
    pod_status,
    remove_all_pods,
    remove_pod,
    run_in_netns,
    run_pod,
    start_listener,
    stop_pod,
    wait_shim,
)

pytestmark = pytest.mark.root


def _listdir(p: Path) -> set[str]:
    return set(os.listdir(p)) if p.exists() else set()


def _pod_dir(d: Crispyd, pod_id: str) -> Path:
    return d.state / "pods" / pod_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=10) as c:
        return c.recv(100).decode()


# -- run, status, list ------------------------------------------------------------------


def test_pod_gets_an_ip_in_the_cni_range_and_is_listed(
    pods: CriClient, pod_net: TestNetwork
) -> None:
    cfg = pod_config(labels={"app": "web", "tier": "front"}, annotations={"a": "b"})
    pod_id = run_pod(pods, cfg)
    status, info = pod_status(pods, pod_id)
    assert status.state == pb.SANDBOX_READY
    assert status.metadata == cfg.metadata
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(pod_net.subnet)
    assert status.network.ip in pod_net.allocated()
    assert dict(status.labels) == {"app": "web", "tier": "front"}
    assert dict(status.annotations) == {"a": "b"}
    assert status.runtime_handler == ""  # as the request named it, like containerd
    assert info["runtimeHandler"] == "runc"  # what runs it
    assert status.created_at > 0
    assert status.linux.namespaces.options.network == pb.POD
    assert os.path.exists(info["netns"])
    assert wait_shim(pods, pod_id)["shimPid"] > 0
    assert info["cgroupParent"] == f"/crispy/{pod_id}"

    items = pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert pod_id in [p.id for p in items]
    assert next(p for p in items if p.id == pod_id).runtime_handler == ""
    flt = pb.PodSandboxFilter(label_selector={"app": "web"})
    assert [
        p.id for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt)).items
    ] == [pod_id]
    flt = pb.PodSandboxFilter(label_selector={"app": "db"})
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt)).items
    flt = pb.PodSandboxFilter(id=pod_id[:10])
    assert [
        p.id for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt)).items
    ] == [pod_id]
    ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    notready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY))
    assert pod_id in [
        p.id for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=ready)).items
    ]
    stop_pod(pods, pod_id)
    assert [
        p.id for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=notready)).items
    ] == [pod_id]
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=ready)).items


def test_listener_in_the_pod_answers_on_the_pod_ip(pods: CriClient) -> None:
    pod_id = run_pod(pods, pod_config())
    status, info = pod_status(pods, pod_id)
    server = start_listener(info["netns"], 8080, "hello from the pod")
    try:
        assert _fetch(status.network.ip, 8080) == "hello from the pod"
    finally:
        server.kill()
        server.wait()


def test_two_pods_reach_each_other(pods: CriClient) -> None:
    a = run_pod(pods, pod_config())
    b = run_pod(pods, pod_config())
    a_status, a_info = pod_status(pods, a)
    _, b_info = pod_status(pods, b)
    server = start_listener(a_info["netns"], 9000, "hi b")
    try:
        out = run_in_netns(b_info["netns"], *connect_script(a_status.network.ip, 9000))
        assert out.strip() == "hi b"
    finally:
        server.kill()
        server.wait()


def test_host_port_reaches_the_pod_from_localhost(pods: CriClient) -> None:
    host_port = _free_port()
    cfg = pod_config(
        ports=[pb.PortMapping(protocol=pb.TCP, container_port=8081, host_port=host_port)]
    )
    pod_id = run_pod(pods, cfg)
    _, info = pod_status(pods, pod_id)
    server = start_listener(info["netns"], 8081, "via hostPort")
    try:
        assert _fetch("127.0.0.1", host_port) == "via hostPort"
    finally:
        server.kill()
        server.wait()
    remove_pod(pods, pod_id)
    rules = "\n".join(host_state()["rules"])
    assert f"--dport {host_port}" not in rules


def test_hostname_is_set_in_the_pod_uts_namespace(pods: CriClient, pod_crispyd: Crispyd) -> None:
    pod_id = run_pod(pods, pod_config(hostname="my-pod-host"))
    _, info = pod_status(pods, pod_id)
    out = subprocess.run(
        ["nsenter", f"--uts={info['namespaces']['uts']}", "hostname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "my-pod-host"
    assert (_pod_dir(pod_crispyd, pod_id) / "hostname").read_text() == "my-pod-host\n"
    # lo is up (the loopback plugin) and eth0 carries the pod IP
    links = run_in_netns(info["netns"], "ip", "-o", "link")
    assert "lo:" in links and "UP" in links.split("lo:")[1].splitlines()[0]


# -- files ---------------------------------------------


def test_files_with_dns_config(pods: CriClient, pod_crispyd: Crispyd) -> None:
    dns = pb.DNSConfig(
        servers=["10.96.0.10", "10.96.0.11"],
        searches=["ns.svc.cluster.local", "svc.cluster.local"],
        options=["ndots:5", "timeout:2"],
    )
    pod_id = run_pod(pods, pod_config(name="dnspod", hostname="dns-host", dns=dns))
    status, _ = pod_status(pods, pod_id)
    d = _pod_dir(pod_crispyd, pod_id)
    assert (d / "resolv.conf").read_text() == (
        "nameserver 10.96.0.10\nnameserver 10.96.0.11\n"
        "search ns.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:2\n"
    )
    hosts = (d / "hosts").read_text()
    assert "127.0.0.1\tlocalhost\n" in hosts and "::1\tlocalhost" in hosts
    assert f"{status.network.ip}\tdns-host\n" in hosts
    assert (d / "hostname").read_text() == "dns-host\n"


def test_files_without_dns_config_use_the_hosts_resolver(
    pods: CriClient, pod_crispyd: Crispyd
) -> None:
    pod_id = run_pod(pods, pod_config(name="plainpod"))
    d = _pod_dir(pod_crispyd, pod_id)
    host = [
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    ]
    got = [
        line.split()[1]
        for line in (d / "resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    ]
    assert got == [s for s in host if not ipaddress.ip_address(s).is_loopback]
    # without a hostname the pod is named after itself
    assert (d / "hostname").read_text() == "plainpod\n"


def test_shm_is_a_size_limited_tmpfs(pods: CriClient, pod_crispyd: Crispyd) -> None:
    pod_id = run_pod(pods, pod_config())
    shm = str(_pod_dir(pod_crispyd, pod_id) / "shm")
    line = next(x for x in Path("/proc/self/mountinfo").read_text().splitlines() if f" {shm} " in x)
    assert " - tmpfs " in line and "size=65536k" in line and "nosuid" in line
    _, info = pod_status(pods, pod_id)
    assert info["shm"] == shm


def test_host_network_pod_with_a_hostname_is_refused(pods: CriClient) -> None:
    """kubelet sends no hostname for a host-network pod; one that does would have crispy
    change the node's own hostname, or silently ignore it."""
    before = os.uname().nodename
    cfg = pod_config(network=pb.NODE, hostname="not-the-node")
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, cfg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in (e.value.details() or "")
    assert os.uname().nodename == before
    names = [p.metadata.name for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    assert cfg.metadata.name not in names


def test_host_network_pod_sees_the_hosts_interfaces(pods: CriClient, pod_crispyd: Crispyd) -> None:
    pod_id = run_pod(pods, pod_config(network=pb.NODE, pid=pb.POD, ipc=pb.NODE))
    status, info = pod_status(pods, pod_id)
    assert status.network.ip == ""
    assert info["netns"] == "" and info["shm"] == "/dev/shm"
    # its infra container lives in the host's network namespace
    pid = info["pid"]
    assert pid > 0
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    assert os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    d = _pod_dir(pod_crispyd, pod_id)
    assert (d / "hosts").read_text() == Path("/etc/hosts").read_text()
    assert (d / "hostname").read_text() == os.uname().nodename + "\n"
    assert (d / "resolv.conf").read_text().split() == Path("/etc/resolv.conf").read_text().split()


# -- PID namespace modes ---------------------------------------------


def test_shared_pid_pod_runs_the_infra_container(pods: CriClient) -> None:
    pod_id = run_pod(pods, pod_config(pid=pb.POD))
    _, info = pod_status(pods, pod_id)
    pid = info["pid"]
    assert pid > 0 and info["infraContainer"]["id"] == pod_id
    # PID 1 of its own PID namespace, in the pod's pinned network namespace, as 65535
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(info["netns"]).st_ino
    assert os.stat(f"/proc/{pid}/ns/ipc").st_ino == os.stat(info["namespaces"]["ipc"]).st_ino
    status_text = Path(f"/proc/{pid}/status").read_text()
    nspid = next(x for x in status_text.splitlines() if x.startswith("NSpid:"))
    assert nspid.split()[-1] == "1"
    assert "Uid:\t65535" in status_text
    # its parent is the pod's shim (a subreaper), not crispyd
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid == info["shimPid"]
    stop_pod(pods, pod_id)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_container_pid_mode_has_no_infra_process(pods: CriClient) -> None:
    pod_id = run_pod(pods, pod_config(pid=pb.CONTAINER))
    _, info = pod_status(pods, pod_id)
    assert info["pid"] == 0 and info["infraContainer"] is None


# -- sysctls and cgroups ---------------------------------------------


def test_namespaced_sysctls_apply_inside_the_pod(pods: CriClient) -> None:
    pod_id = run_pod(
        pods,
        pod_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "77", "kernel.shmmni": "1234"}),
    )
    _, info = pod_status(pods, pod_id)
    got = run_in_netns(info["netns"], "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert got.strip() == "77"
    ipc = subprocess.run(
        ["nsenter", f"--ipc={info['namespaces']['ipc']}", "cat", "/proc/sys/kernel/shmmni"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ipc.strip() == "1234"
    assert Path("/proc/sys/kernel/shmmni").read_text().strip() != "1234"


@pytest.mark.parametrize(
    ("sysctls", "message"),
    [
        ({"kernel.core_pattern": "|/tmp/x"}, "not namespaced"),
        ({"net.ipv4.ip_forward": "1+kernel.core_pattern=|/tmp/x"}, "second key"),
        ({"kernel.shm_rmid_forced": "1\nkernel.core_pattern=x"}, "second key"),
        ({"../../etc/passwd": "1"}, "not a valid sysctl name"),
    ],
)
def test_bad_sysctls_are_refused_and_leave_nothing(
    pods: CriClient, pod_crispyd: Crispyd, sysctls: dict[str, str], message: str
) -> None:
    before = _listdir(pod_crispyd.state / "pods")
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, pod_config(sysctls=sysctls))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert _listdir(pod_crispyd.state / "pods") == before
    assert "|/tmp/x" not in Path("/proc/sys/kernel/core_pattern").read_text()


def test_host_network_refuses_net_sysctls(pods: CriClient) -> None:
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, pod_config(network=pb.NODE, sysctls={"net.ipv4.ip_forward": "1"}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "host networking" in e.value.details()


def test_pod_cgroup_is_created_and_removed(pods: CriClient) -> None:
    top = f"/crispytest{random.randrange(1 << 30)}"
    parent = f"{top}/pod"
    pod_id = run_pod(pods, pod_config(cgroup_parent=parent))
    for ctl in ("memory", "cpu", "pids"):
        assert Path(f"/sys/fs/cgroup/{ctl}{parent}").is_dir()
    remove_pod(pods, pod_id)
    for ctl in ("memory", "cpu", "pids"):
        assert not Path(f"/sys/fs/cgroup/{ctl}{parent}").exists()
        # crispy made the parent too, so it removed it once empty
        assert not Path(f"/sys/fs/cgroup/{ctl}{top}").exists()


# -- errors and idempotence ---------------------------------------------


def test_same_metadata_twice_names_the_reserved_name(pods: CriClient) -> None:
    cfg = pod_config(name="twice")
    first = run_pod(pods, cfg)
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, cfg)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    name = f"twice_{cfg.metadata.namespace}_{cfg.metadata.uid}_0"
    assert name in e.value.details() and first in e.value.details()
    # a new attempt is a new pod
    cfg.metadata.attempt = 1
    assert run_pod(pods, cfg) != first


def test_bad_metadata_is_invalid(pods: CriClient) -> None:
    cfg = pod_config()
    cfg.metadata.uid = ""
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, cfg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.uid" in e.value.details()


def test_unknown_pod_status_is_not_found_and_stop_remove_are_ok(pods: CriClient) -> None:
    with pytest.raises(grpc.RpcError) as e:
        pod_status(pods, "f" * 64)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stop_pod(pods, "f" * 64)
    remove_pod(pods, "f" * 64)


def test_stop_and_remove_are_idempotent(pods: CriClient, pod_net: TestNetwork) -> None:
    pod_id = run_pod(pods, pod_config())
    status, info = pod_status(pods, pod_id)
    ip = status.network.ip
    stop_pod(pods, pod_id)
    stop_pod(pods, pod_id)
    status, info = pod_status(pods, pod_id)
    assert status.state == pb.SANDBOX_NOTREADY
    assert status.network.ip == "" and ip not in pod_net.allocated()
    assert not os.path.exists(info["netns"])
    remove_pod(pods, pod_id)
    remove_pod(pods, pod_id)
    with pytest.raises(grpc.RpcError):
        pod_status(pods, pod_id)


def test_remove_without_stop(pods: CriClient, pod_net: TestNetwork, pod_crispyd: Crispyd) -> None:
    pod_id = run_pod(pods, pod_config(pid=pb.POD))
    status, info = pod_status(pods, pod_id)
    remove_pod(pods, pod_id)
    assert status.network.ip not in pod_net.allocated()
    assert not _pod_dir(pod_crispyd, pod_id).exists()
    assert (
        not Path(f"/proc/{info['shimPid']}/cmdline").exists()
        or pod_id.encode() not in Path(f"/proc/{info['shimPid']}/cmdline").read_bytes()
    )


# -- RuntimeClass ---------------------------------------------


def test_crun_handler_is_recorded(pods: CriClient) -> None:
    pod_id = run_pod(pods, pod_config(pid=pb.POD), handler="crun")
    status, info = pod_status(pods, pod_id)
    assert status.runtime_handler == "crun"
    assert info["runtimeHandler"] == "crun" and info["pid"] > 0
    items = pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert next(p for p in items if p.id == pod_id).runtime_handler == "crun"


def test_unknown_handler_fails_cleanly(pods: CriClient, pod_crispyd: Crispyd) -> None:
    before = host_state()
    with pytest.raises(grpc.RpcError) as e:
        run_pod(pods, pod_config(), handler="kata-nope")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata-nope" in e.value.details()
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    after = host_state()
    assert after["links"] == before["links"] and after["rules"] == before["rules"]


# -- no leaks ---------------------------------------------


def _leak_check(pods: CriClient, d: Crispyd, net: TestNetwork, n: int, **kw: object) -> None:
    before = host_state(d.base, net)
    ids = []
    for _ in range(n):
        pod_id = run_pod(pods, pod_config(**kw))  # type: ignore[arg-type]
        ids.append(pod_id)
        status, _ = pod_status(pods, pod_id)
        assert status.state == pb.SANDBOX_READY
        stop_pod(pods, pod_id)
        remove_pod(pods, pod_id)
        assert not (d.state / "pods" / pod_id).exists()
        assert not (d.state / "ns" / pod_id).exists()
    after = host_state(d.base, net)
    assert after["mounts"] == before["mounts"]
    assert after["rules"] <= before["rules"]
    assert not [r for r in after["rules"] if any(i in r for i in ids)]
    ports = subprocess.run(
        ["ip", "-o", "link", "show", "master", net.bridge], capture_output=True, text=True
    ).stdout
    assert ports.strip() == "", ports  # every pod's veth is gone from the bridge
    assert net.allocated() == set()
    for ctl in ("memory", "cpu", "pids", "cpuset", "systemd"):
        assert not _listdir(Path(f"/sys/fs/cgroup/{ctl}/crispy")) & set(ids)
    assert not _listdir(d.root / "cni" / "results")


def test_fifty_pods_leave_nothing_behind(
    pods: CriClient, pod_crispyd: Crispyd, pod_net: TestNetwork
) -> None:
    run_pod(pods, pod_config())  # the bridge exists before the baseline is taken
    remove_all_pods(pods)
    _leak_check(pods, pod_crispyd, pod_net, 50)


def test_shared_pid_pods_leave_nothing_behind(
    pods: CriClient, pod_crispyd: Crispyd, pod_net: TestNetwork
) -> None:
    run_pod(pods, pod_config())
    remove_all_pods(pods)
    _leak_check(pods, pod_crispyd, pod_net, 5, pid=pb.POD)


def test_stop_releases_the_ip_when_the_netns_is_already_gone(
    pods: CriClient, pod_net: TestNetwork
) -> None:
    pod_id = run_pod(pods, pod_config())
    status, info = pod_status(pods, pod_id)
    subprocess.run(["umount", "-l", info["netns"]], check=True)  # someone else tore it down
    stop_pod(pods, pod_id)
    stop_pod(pods, pod_id)
    assert status.network.ip not in pod_net.allocated()
    assert pod_status(pods, pod_id)[0].state == pb.SANDBOX_NOTREADY


def test_root_and_state_are_private_and_no_socket_is_abstract(
    pods: CriClient, pod_crispyd: Crispyd
) -> None:
    pod_id = run_pod(pods, pod_config())
    shim_pid = wait_shim(pods, pod_id)["shimPid"]
    for d in (pod_crispyd.root, pod_crispyd.state):
        assert d.stat().st_mode & 0o777 == 0o700
    assert pod_crispyd.proc is not None
    # every listening unix socket of crispyd and the shim has a path (no '@' abstract name,
    # which a host-network container could reach)
    for pid in (pod_crispyd.proc.pid, shim_pid):
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
        }
        names = [
            line.split()[-1]
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]
            if line.split()[6] in inodes and len(line.split()) > 7
        ]
        assert names and not [n for n in names if n.startswith("@")], names
