"""Pure pieces of pod set-up: sysctl policy, resolver/hosts files, cgroup paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crispy import errors
from crispy.sandbox import files, sysctls
from crispy.system import cgroups, ns

# -- sysctls ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        ("net.ipv4.ip_forward", "net"),
        ("net/ipv4/conf/eth0.100/forwarding", "net"),
        ("kernel.shmmax", "ipc"),
        ("kernel.msgmnb", "ipc"),
        ("kernel.sem", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("kernel.domainname", "uts"),
        ("kernel.core_pattern", None),
        ("vm.overcommit_memory", None),
        ("kernel.semx", None),
    ],
)
def test_namespace_of(key: str, namespace: str | None) -> None:
    assert sysctls.namespace_of(key) == namespace


def test_sysctl_paths_keep_dots_inside_slash_keys() -> None:
    assert ns.sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert (
        ns.sysctl_path("net/ipv4/conf/eth0.100/forwarding")
        == "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    )


def test_allowed_sysctls_pass() -> None:
    want = {
        "net.ipv4.ip_local_port_range": "1024 65000",
        "kernel.sem": "250 32000 32 128",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    assert sysctls.validate(want, host_network=False, host_ipc=False) == want


@pytest.mark.parametrize(
    ("key", "value", "host_net", "host_ipc", "message"),
    [
        ("kernel.core_pattern", "core", False, False, "not namespaced"),
        ("net.core.somaxconn", "1+kernel.core_pattern=|/x", False, False, "second key"),
        ("net.core.somaxconn", "1\nkernel.core_pattern=x", False, False, "second key"),
        ("net.core.somaxconn", "1=2", False, False, "second key"),
        ("net.core.somaxconn", "1\x00", False, False, "second key"),
        ("net..core", "1", False, False, "not a valid sysctl name"),
        ("net/../../etc", "1", False, False, "not a valid sysctl name"),
        ("", "1", False, False, "not a valid sysctl name"),
        ("net.core.somaxconn", "1", True, False, "host networking"),
        ("kernel.shmmax", "1", False, True, "host IPC"),
        ("kernel.domainname", "x", True, False, "UTS"),
    ],
)
def test_refused_sysctls(
    key: str, value: str, host_net: bool, host_ipc: bool, message: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        sysctls.validate({key: value}, host_network=host_net, host_ipc=host_ipc)


# -- resolv.conf and hosts ---------------------------------------------------------------------


def test_parse_and_render_resolv() -> None:
    dns = files.parse_resolv(
        "# comment\nnameserver 1.1.1.1\nnameserver 127.0.0.53 ; stub\n"
        "domain old.example\nsearch a.example b.example\noptions ndots:2\noptions edns0\n"
    )
    assert dns.servers == ["1.1.1.1", "127.0.0.53"]
    assert dns.searches == ["a.example", "b.example"]
    assert dns.options == ["ndots:2", "edns0"]
    assert files.render_resolv(dns) == (
        "nameserver 1.1.1.1\nnameserver 127.0.0.53\n"
        "search a.example b.example\noptions ndots:2 edns0\n"
    )
    assert files.render_resolv(files.DNS()) == ""


def test_host_dns_drops_loopback_resolvers_for_pod_networks(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\nsearch x\n")
    missing = str(tmp_path / "none")
    dns = files.host_dns(False, str(resolv), missing)
    assert dns.servers == ["10.0.0.2"] and dns.searches == ["x"]
    # a host-network pod reaches the host's loopback resolver, so it keeps it
    assert files.host_dns(True, str(resolv), missing).servers[0] == "127.0.0.53"


def test_host_dns_uses_resolveds_upstream_list(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nsearch lan\noptions edns0 trust-ad\n")
    upstream = tmp_path / "upstream"
    upstream.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    dns = files.host_dns(False, str(resolv), str(upstream))
    assert dns.servers == ["192.0.2.53", "2001:db8::53"]
    assert dns.searches == ["lan"] and dns.options == ["edns0", "trust-ad"]


def test_hosts_file_names_the_pod() -> None:
    text = files.hosts_file("web-0", ["10.1.0.5", "fd00::5"], host_network=False)
    assert text.splitlines()[1] == "127.0.0.1\tlocalhost"
    assert text.endswith("10.1.0.5\tweb-0\nfd00::5\tweb-0\n")


def test_pod_files_are_written_whole(tmp_path: Path) -> None:
    dns = files.DNS(["10.96.0.10"], ["svc.local"], ["ndots:5"])
    files.write_pod_files(str(tmp_path), "h1", dns, ["10.0.0.9"], host_network=False)
    assert (tmp_path / "resolv.conf").read_text() == (
        "nameserver 10.96.0.10\nsearch svc.local\noptions ndots:5\n"
    )
    assert (tmp_path / "hostname").read_text() == "h1\n"
    assert "10.0.0.9\th1\n" in (tmp_path / "hosts").read_text()
    assert (tmp_path / "hosts").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob("*.tmp"))


# -- cgroups ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slice_name", "path"),
    [
        ("kubepods.slice", "/kubepods.slice"),
        ("kubepods-besteffort.slice", "/kubepods.slice/kubepods-besteffort.slice"),
        (
            "kubepods-burstable-pod1234.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice",
        ),
        ("-.slice", "/"),
    ],
)
def test_systemd_slice_paths(slice_name: str, path: str) -> None:
    assert cgroups.systemd_slice_path(slice_name) == path


@pytest.mark.parametrize("bad", ["kubepods", "a--b.slice", "a/b.slice", "-a.slice"])
def test_bad_slice_names(bad: str) -> None:
    with pytest.raises(ValueError):
        cgroups.systemd_slice_path(bad)


def test_cgroup_paths_never_climb_out() -> None:
    assert cgroups.normalize_path("kubepods//pod1/") == "/kubepods/pod1"
    with pytest.raises(ValueError):
        cgroups.normalize_path("/kubepods/../../etc")


def test_create_and_remove_in_every_hierarchy(tmp_path: Path) -> None:
    cpuset, memory = tmp_path / "cpuset", tmp_path / "memory"
    for d in (cpuset, memory):
        d.mkdir()
    (cpuset / "cpuset.cpus").write_text("0-1\n")
    (cpuset / "cpuset.mems").write_text("0\n")
    (memory / "kubepods").mkdir()  # already there: not reported as made

    roots = [str(cpuset), str(memory)]
    made = cgroups.create("/kubepods/pod1", roots)
    assert sorted(made) == sorted(
        [str(cpuset / "kubepods"), str(cpuset / "kubepods/pod1"), str(memory / "kubepods/pod1")]
    )
    # on a real cgroupfs the files exist empty; here the parent's values were copied in
    assert cgroups.exists_anywhere("/kubepods/pod1", roots) == [
        str(cpuset / "kubepods/pod1"),
        str(memory / "kubepods/pod1"),
    ]
    assert cgroups.remove("/kubepods/pod1", roots) == []
    assert not cgroups.exists_anywhere("/kubepods/pod1", roots)
    assert (memory / "kubepods").is_dir()  # only the leaf goes
    assert cgroups.remove("/kubepods/pod1", roots) == []  # twice is fine


def test_missing_cgroup_parents_are_removed_only_when_empty(tmp_path: Path) -> None:
    roots = [str(tmp_path / "cpu"), str(tmp_path / "memory")]
    for r in roots:
        os.makedirs(os.path.join(r, "kubelet"))
    # /kubelet exists (kubelet's); /kubelet/a and /kubelet/a/b are crispy's to make
    made = cgroups.missing_ancestors("/kubelet/a/b/pod1", roots)
    assert made == ["/kubelet/a", "/kubelet/a/b"]
    cgroups.create("/kubelet/a/b/pod1", roots)
    cgroups.create("/kubelet/a/b/pod2", roots)  # another pod under the same parents
    cgroups.remove("/kubelet/a/b/pod1", roots)
    cgroups.remove_if_empty(made, roots)
    assert cgroups.exists_anywhere("/kubelet/a/b/pod2", roots)  # never below them
    cgroups.remove("/kubelet/a/b/pod2", roots)
    cgroups.remove_if_empty(made, roots)
    assert cgroups.exists_anywhere("/kubelet/a", roots) == []
    assert len(cgroups.exists_anywhere("/kubelet", roots)) == 2
    cgroups.remove_if_empty(made, roots)  # twice is fine
