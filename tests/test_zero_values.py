"""Protobuf zero values are first-class (issue 12): what each unset CRI field means.

critest sends a pod with only `metadata`, `labels` and `linux: {}`, and a container with
`metadata`, `image` and `command`; kubelet leaves every field it has no value for at its
zero value. These tests build OCI specs and pod views from exactly such configs and pin
what each zero value means today (docs/cri-zero-values.md lists every field). No root,
no daemon.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from crispy import errors
from crispy.api import pb
from crispy.containers.manager import ContainerManager
from crispy.containers.record import Container, ContainerInfo
from crispy.cri.images import credentials
from crispy.cri.sandbox import sandbox_status
from crispy.oci import spec as specmod
from crispy.oci.spec import SpecContext, build_spec, linux_resources
from crispy.sandbox import cni, files, sysctls
from crispy.sandbox.manager import SandboxManager
from crispy.sandbox.pod import READY, Pod, PodInfo, pod_hostname, reserved_name
from crispy.streaming import remotecommand
from support.spec_context import make_ctx

IMAGE_REF = "registry.example/app:1"
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nwheel:x:10:app\napp:x:1000:\n"
NS_DIR = "/run/crispy/ns/p0d"
PID_NS = "/proc/4242/ns/pid"


# -- the shapes real clients send ----------------------------------------------------------


def bare_pod(name: str = "create-PodSandbox-for-container-1") -> pb.PodSandboxConfig:
    """critest's RunDefaultPodSandbox: metadata and `linux: {}`, nothing else."""
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid="uid-1", namespace="ns-1", attempt=0),
        linux=pb.LinuxPodSandboxConfig(),
    )


def bare_container(**kw: Any) -> pb.ContainerConfig:
    """critest's container: metadata, image and command; no `linux` section at all."""
    kw.setdefault("metadata", pb.ContainerMetadata(name="ctr"))
    kw.setdefault("image", pb.ImageSpec(image=IMAGE_REF))
    kw.setdefault("command", ["/bin/sh", "-c", "sleep 1"])
    return pb.ContainerConfig(**kw)


def with_sc(**kw: Any) -> pb.ContainerConfig:
    """A bare container whose security context sets only the given fields."""
    return bare_container(
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))
    )


def image_config(**cfg: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": cfg}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def ctx_for(rootfs: Path, **kw: Any) -> SpecContext:
    """What ContainerManager._context gives a container of a bare pod (shared PID)."""
    base: dict[str, Any] = dict(
        pid_ns=PID_NS,
        hostname=pod_hostname(bare_pod()),
        cgroups_path="/crispy/p0d/c0ffee",
        volume_dir="",
    )
    base.update(kw)
    return make_ctx(rootfs, **base)


def build(
    rootfs: Path,
    config: pb.ContainerConfig | None = None,
    *,
    pod: pb.PodSandboxConfig | None = None,
    image: dict[str, Any] | None = None,
    **ctx: Any,
) -> dict[str, Any]:
    return build_spec(
        config if config is not None else bare_container(),
        pod if pod is not None else bare_pod(),
        image if image is not None else image_config(),
        ctx_for(rootfs, **ctx),
    )


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])


def ns_of(spec: dict[str, Any]) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


def make_pod(config: pb.PodSandboxConfig) -> Pod:
    return Pod("p0d", reserved_name(config.metadata), READY, 1, "runc", config)


def bare_manager(cgroup_driver: str = "cgroupfs") -> SandboxManager:
    """A SandboxManager with no config, store or CNI: for its pure helpers only."""
    m = SandboxManager.__new__(SandboxManager)
    m.cgroup_driver = cgroup_driver
    return m


# -- LinuxContainerSecurityContext.namespace_options: unset = POD ----------------------------


def test_namespace_options_unset_pid_POD_joins_the_pods_pid_namespace(rootfs: Path) -> None:
    spec = build(rootfs)
    assert ns_of(spec)["pid"] == PID_NS


def test_namespace_options_unset_pid_POD_without_a_pod_pid_namespace_is_a_new_one(
    rootfs: Path,
) -> None:
    # A pod that does not share its PID namespace (pid CONTAINER) has no pid_ns to join.
    spec = build(rootfs, pid_ns="")
    assert ns_of(spec)["pid"] is None
    assert [n["type"] for n in spec["linux"]["namespaces"]].count("pid") == 1


def test_namespace_options_unset_pid_POD_in_a_host_pid_pod_is_the_hosts(rootfs: Path) -> None:
    # The container's POD means its pod's PID namespace; a host-PID pod's is the host's.
    pod = bare_pod()
    pod.linux.security_context.namespace_options.pid = pb.NODE
    spec = build(rootfs, pod=pod, pid_ns="")
    assert "pid" not in ns_of(spec)


def test_namespace_options_unset_joins_the_pods_network_ipc_uts_and_a_new_mount_ns(
    rootfs: Path,
) -> None:
    spec = build(rootfs)
    assert ns_of(spec) == {
        "pid": PID_NS,
        "network": f"{NS_DIR}/net",
        "ipc": f"{NS_DIR}/ipc",
        "uts": f"{NS_DIR}/uts",
        "mount": None,
    }


def test_namespace_options_explicit_POD_is_the_same_as_unset(rootfs: Path) -> None:
    explicit = with_sc(namespace_options=pb.NamespaceOption(pid=pb.POD, network=pb.POD))
    assert build(rootfs, explicit) == build(rootfs)


def test_namespace_options_pid_CONTAINER_is_a_new_pid_namespace(rootfs: Path) -> None:
    spec = build(rootfs, with_sc(namespace_options=pb.NamespaceOption(pid=pb.CONTAINER)))
    assert ns_of(spec)["pid"] is None


def test_userns_options_unset_is_accepted_but_set_with_mode_zero_POD_is_refused(
    rootfs: Path,
) -> None:
    build(rootfs, with_sc(namespace_options=pb.NamespaceOption()))
    empty_userns = pb.NamespaceOption(userns_options=pb.UserNamespace())
    with pytest.raises(errors.InvalidArgument, match="userns_options"):
        build(rootfs, with_sc(namespace_options=empty_userns))
    node = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE))
    build(rootfs, with_sc(namespace_options=node))


# -- capabilities, privileges, paths -------------------------------------------------------------


def test_capabilities_unset_are_containerds_default_set(rootfs: Path) -> None:
    caps = build(rootfs)["process"]["capabilities"]
    want = list(specmod.DEFAULT_CAPS)
    assert caps == {"bounding": want, "effective": want, "permitted": want}


def test_capabilities_empty_message_is_the_same_as_unset(rootfs: Path) -> None:
    spec = build(rootfs, with_sc(capabilities=pb.Capability()))
    assert spec["process"]["capabilities"] == build(rootfs)["process"]["capabilities"]


def test_no_new_privs_false_and_readonly_rootfs_false_when_unset(rootfs: Path) -> None:
    spec = build(rootfs)
    assert spec["process"]["noNewPrivileges"] is False
    assert spec["root"]["readonly"] is False


def test_readonly_rootfs_false_leaves_the_pod_files_writable(rootfs: Path) -> None:
    spec = build(rootfs)
    for dest in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"):
        (m,) = [m for m in spec["mounts"] if m["destination"] == dest]
        assert m["options"][-1] == "rw", dest


def test_masked_and_readonly_paths_empty_are_the_defaults(rootfs: Path) -> None:
    spec = build(rootfs)
    assert spec["linux"]["maskedPaths"] == list(specmod.MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(specmod.READONLY_PATHS)


def test_privileged_false_when_linux_unset_on_pod_refuses_a_privileged_container(
    rootfs: Path,
) -> None:
    with pytest.raises(errors.InvalidArgument, match="pod sandbox is not privileged"):
        build(rootfs, with_sc(privileged=True), pod=bare_pod())


# -- seccomp and AppArmor ----------------------------------------------------------------------


def test_seccomp_unset_and_seccomp_profile_path_empty_mean_unconfined(rootfs: Path) -> None:
    assert "seccomp" not in build(rootfs)["linux"]


def test_seccomp_set_but_empty_is_profile_type_zero_RuntimeDefault(rootfs: Path) -> None:
    # Message presence counts: `seccomp: {}` is RuntimeDefault (enum 0), not "unset".
    spec = build(rootfs, with_sc(seccomp=pb.SecurityProfile()))
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_seccomp_Localhost_with_empty_localhost_ref_is_invalid(rootfs: Path) -> None:
    profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost)
    with pytest.raises(errors.InvalidArgument, match="seccomp profile"):
        build(rootfs, with_sc(seccomp=profile))


def test_apparmor_unset_is_the_runtime_default_profile_where_apparmor_exists(
    rootfs: Path,
) -> None:
    spec = build(rootfs, apparmor_available=True, apparmor_default_profile="crispy-default")
    assert spec["process"]["apparmorProfile"] == "crispy-default"


def test_apparmor_unset_is_no_profile_where_apparmor_is_missing(rootfs: Path) -> None:
    assert "apparmorProfile" not in build(rootfs, apparmor_available=False)["process"]


# -- user and groups ---------------------------------------------------------------------------


def test_run_as_user_unset_and_image_User_empty_runs_as_root(rootfs: Path) -> None:
    user = build(rootfs)["process"]["user"]
    assert (user["uid"], user["gid"]) == (0, 0)
    assert env_of(build(rootfs))["HOME"] == "/root"


def test_run_as_user_unset_uses_the_image_User(rootfs: Path) -> None:
    user = build(rootfs, image=image_config(User="app"))["process"]["user"]
    assert (user["uid"], user["gid"]) == (1000, 1000)


def test_run_as_user_set_to_zero_is_root_not_unset(rootfs: Path) -> None:
    # Int64Value is a wrapper: value 0 inside a set message is uid 0, over the image's USER.
    spec = build(
        rootfs, with_sc(run_as_user=pb.Int64Value(value=0)), image=image_config(User="app")
    )
    assert spec["process"]["user"]["uid"] == 0


def test_run_as_group_without_a_user_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="run_as_group"):
        build(rootfs, with_sc(run_as_group=pb.Int64Value(value=0)))


def test_supplemental_groups_policy_zero_is_Merge_with_the_images_groups(rootfs: Path) -> None:
    img = image_config(User="app")
    merged = build(rootfs, image=img)["process"]["user"]["additionalGids"]
    strict_cfg = with_sc(supplemental_groups_policy=pb.SupplementalGroupsPolicy.Strict)
    strict = build(rootfs, strict_cfg, image=img)["process"]["user"]["additionalGids"]
    assert 10 in merged  # wheel lists app in the image's /etc/group
    assert 10 not in strict


# -- process: args, cwd, env, terminal ----------------------------------------------------------


def test_working_dir_empty_and_no_image_WorkingDir_is_root(rootfs: Path) -> None:
    assert build(rootfs)["process"]["cwd"] == "/"


def test_working_dir_empty_uses_the_image_WorkingDir(rootfs: Path) -> None:
    assert build(rootfs, image=image_config(WorkingDir="/srv"))["process"]["cwd"] == "/srv"


def test_command_and_args_empty_use_the_image_entrypoint_and_cmd(rootfs: Path) -> None:
    img = image_config(Entrypoint=["/entry"], Cmd=["serve"])
    spec = build(rootfs, bare_container(command=[]), image=img)
    assert spec["process"]["args"] == ["/entry", "serve"]


def test_command_empty_with_an_image_without_one_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="no command"):
        build(rootfs, bare_container(command=[]))


def test_envs_empty_give_PATH_HOSTNAME_and_HOME(rootfs: Path) -> None:
    assert env_of(build(rootfs)) == {
        "PATH": specmod.DEFAULT_PATH,
        "HOSTNAME": "create-PodSandbox-for-container-1",
        "HOME": "/root",
    }


def test_hostname_empty_everywhere_makes_HOSTNAME_the_nodes(rootfs: Path) -> None:
    # A host-network pod (no UTS namespace, Pod.hostname "") without `hostname`.
    spec = build(rootfs, hostname="", utsns="")
    assert env_of(spec)["HOSTNAME"] == "node-1"
    assert "hostname" not in spec


def test_tty_false_is_no_terminal(rootfs: Path) -> None:
    assert build(rootfs)["process"]["terminal"] is False


# -- resources -----------------------------------------------------------------------------------


def test_resources_unset_set_no_limits_only_the_default_device_rules(rootfs: Path) -> None:
    res = build(rootfs)["linux"]["resources"]
    assert res == {"devices": specmod.DEFAULT_DEVICE_RULES}


def test_linux_resources_of_an_empty_message_is_empty() -> None:
    assert linux_resources(pb.LinuxContainerResources()) == {}


def test_memory_swap_zero_with_a_limit_means_no_swap() -> None:
    res = pb.LinuxContainerResources(memory_limit_in_bytes=1 << 20)
    assert linux_resources(res)["memory"] == {"limit": 1 << 20, "swap": 1 << 20}


@pytest.mark.parametrize(("floor", "want"), [(0, 0), (-999, 0), (300, 300)])
def test_oom_score_adj_zero_is_clamped_up_to_crispyds_own(
    rootfs: Path, floor: int, want: int
) -> None:
    assert build(rootfs, min_oom_score_adj=floor)["process"]["oomScoreAdj"] == want


# -- mounts and devices -------------------------------------------------------------------------


def test_mounts_empty_give_the_oci_defaults_and_the_pod_files(rootfs: Path) -> None:
    dests = [m["destination"] for m in build(rootfs)["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert d in dests
    for d in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"):
        assert dests.count(d) == 1


def test_mount_readonly_false_and_propagation_zero_is_a_private_rw_bind(rootfs: Path) -> None:
    cfg = bare_container(mounts=[pb.Mount(container_path="/data", host_path="/srv/data")])
    spec = build(rootfs, cfg)
    (m,) = [m for m in spec["mounts"] if m["destination"] == "/data"]
    assert m == {
        "destination": "/data",
        "type": "bind",
        "source": "/srv/data",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert "rootfsPropagation" not in spec["linux"]


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (pb.Mount(host_path="/srv/data"), "container_path '' is not an absolute path"),
        (pb.Mount(container_path="/data"), "host_path '' is not absolute"),
    ],
    ids=["container_path-empty", "host_path-empty"],
)
def test_mount_empty_paths_are_invalid(rootfs: Path, mount: pb.Mount, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=re.escape(message)):
        build(rootfs, bare_container(mounts=[mount]))


def test_device_permissions_empty_mean_rwm(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_device(path: str, *, follow: bool = True) -> dict[str, Any]:
        return {"path": path, "type": "c", "major": 10, "minor": 229}

    monkeypatch.setattr(specmod, "host_device", fake_device)
    dev = pb.Device(container_path="/dev/fuse", host_path="/dev/fuse")
    spec = build(rootfs, bare_container(devices=[dev]))
    rule = spec["linux"]["resources"]["devices"][-1]
    assert rule == {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}


def test_device_empty_host_path_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="host_path is not absolute"):
        build(rootfs, bare_container(devices=[pb.Device(container_path="/dev/x")]))


# -- annotations -----------------------------------------------------------------------------------


def test_image_user_specified_image_empty_names_the_image_field(rootfs: Path) -> None:
    ann = build(rootfs)["annotations"]
    assert ann[specmod.ANNOTATION_IMAGE_NAME] == IMAGE_REF
    assert ann[specmod.ANNOTATION_CONTAINER_NAME] == "ctr"


# -- the pod: NamespaceOption, hostname, metadata --------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        bare_pod(),
        pb.PodSandboxConfig(metadata=bare_pod().metadata),  # no `linux` at all
        pb.PodSandboxConfig(
            metadata=bare_pod().metadata,
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption()
                )
            ),
        ),
    ],
    ids=["linux-empty", "linux-unset", "namespace_options-empty"],
)
def test_pod_namespace_options_unset_are_POD_shared_pid_and_no_host_namespaces(
    config: pb.PodSandboxConfig,
) -> None:
    pod = make_pod(config)
    assert pod.shared_pid is True
    assert pod.host_network is False
    assert pod.host_ipc is False
    assert pod.host_pid is False


def test_pod_status_reports_POD_for_unset_namespace_options() -> None:
    opts = sandbox_status(make_pod(bare_pod())).linux.namespaces.options
    assert (opts.network, opts.pid, opts.ipc) == (pb.POD, pb.POD, pb.POD)


def test_pod_hostname_empty_is_the_pods_name() -> None:
    assert pod_hostname(bare_pod("web-0")) == "web-0"
    assert make_pod(bare_pod("web-0")).hostname == "web-0"


def test_pod_hostname_empty_cuts_a_long_name_to_63_without_a_trailing_dash_or_dot() -> None:
    name = "a" * 61 + "-." + "b" * 190  # 253 characters: the 62nd and 63rd are "-."
    assert pod_hostname(bare_pod(name)) == "a" * 61


def test_pod_hostname_set_wins_over_the_name() -> None:
    config = bare_pod("web-0")
    config.hostname = "custom"
    assert pod_hostname(config) == "custom"


def test_pod_hostname_of_a_host_network_pod_is_empty_the_nodes() -> None:
    config = bare_pod("web-0")
    config.linux.security_context.namespace_options.network = pb.NODE
    assert make_pod(config).hostname == ""


def test_pod_metadata_attempt_zero_is_part_of_the_reserved_name() -> None:
    assert reserved_name(bare_pod("web-0").metadata) == "web-0_ns-1_uid-1_0"


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
def test_pod_metadata_empty_field_is_invalid(field: str) -> None:
    config = bare_pod()
    setattr(config.metadata, field, "")
    with pytest.raises(errors.InvalidArgument, match=rf"metadata\.{field} is empty"):
        bare_manager()._validate(config)


def test_pod_metadata_unset_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"metadata\.name is empty"):
        bare_manager()._validate(pb.PodSandboxConfig())


def test_pod_bare_config_is_valid_with_no_sysctls() -> None:
    assert bare_manager()._validate(bare_pod()) == {}
    assert sysctls.validate({}, host_network=False, host_ipc=False) == {}


def test_pod_cgroup_parent_empty_is_a_cgroup_of_its_own_under_cgroupfs() -> None:
    assert bare_manager("cgroupfs")._cgroup_parent("p0d", bare_pod()) == (
        "/crispy/p0d",
        "/crispy/p0d",
    )


# -- the pod: port mappings and DNS ----------------------------------------------------------------


def test_port_mapping_host_port_zero_protocol_zero_and_host_ip_empty() -> None:
    config = bare_pod()
    config.port_mappings.extend(
        [pb.PortMapping(container_port=80), pb.PortMapping(container_port=443, host_port=8443)]
    )
    bare_manager()._validate(config)  # host_port 0 is accepted
    pod = make_pod(config)
    pod.info = PodInfo(netns=f"{NS_DIR}/net", cgroup_parent="")
    net = bare_manager()._pod_network(pod)
    assert [(p.protocol, p.host_ip) for p in net.port_mappings] == [("tcp", ""), ("tcp", "")]
    caps = cni.capability_args(net)
    # host_port 0: no mapping; host_ip "": every address (no hostIP key); cgroup_parent "": none
    assert caps["portMappings"] == [{"hostPort": 8443, "containerPort": 443, "protocol": "tcp"}]
    assert "cgroupPath" not in caps
    assert "bandwidth" not in caps


def test_dns_config_unset_is_the_hosts_resolver_config() -> None:
    dns = bare_pod().dns_config
    mine = files.DNS(list(dns.servers), list(dns.searches), list(dns.options))
    assert mine.empty
    assert files.resolv_conf(mine, host_network=False) == files.render_resolv(
        files.host_dns(host_network=False)
    )


# -- request fields -------------------------------------------------------------------------------


def test_stop_signal_zero_RUNTIME_DEFAULT_is_the_images_then_SIGTERM() -> None:
    rows = {
        "sha256:plain": SimpleNamespace(config={"config": {}}),
        "sha256:quit": SimpleNamespace(config={"config": {"StopSignal": "SIGQUIT"}}),
    }
    fake = cast(ContainerManager, SimpleNamespace(store=SimpleNamespace(get_image=rows.get)))
    for ref, want in (("sha256:plain", 15), ("sha256:quit", 3), ("sha256:gone", 15)):
        c = cast(
            Container,
            SimpleNamespace(id="c0", config=bare_container(), image_ref=ref, info=ContainerInfo()),
        )
        assert ContainerManager.stop_signal(fake, c) == want


def test_auth_config_empty_is_an_anonymous_pull() -> None:
    assert credentials(pb.AuthConfig()) is None


def test_exec_and_attach_with_stdin_stdout_stderr_all_false_are_invalid() -> None:
    with pytest.raises(errors.InvalidArgument, match="one of stdin, stdout, or stderr"):
        remotecommand.Options(stdin=False, stdout=False, stderr=False, tty=False)
