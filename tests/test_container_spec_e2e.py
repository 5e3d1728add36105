"""The CRI → OCI translation end to end: real containers (runc under the pod's shim) made
through the real daemon, each test reading what the container sees from its CRI log or
through ExecSync."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.oci.spec import host_mount_propagation
from support.containers import (
    container_config,
    create,
    exec_sync,
    log_text,
    run,
    wait_exit,
    wait_state,
)
from support.daemon import Crispyd
from support.images import (
    LayerBuilder,
    busybox_applets,
    busybox_layer,
    image_config,
    push_image,
)
from support.pods import host_state, pod_config, run_pod
from support.registry import Registry
from support.registry_fixtures import DEFAULT_PATH, TestImages

pytestmark = pytest.mark.root

SC = pb.LinuxContainerSecurityContext
MiB = 1 << 20
CGROUP_V1 = Path("/sys/fs/cgroup/memory").is_dir()
DOCKER_DEFAULT_CAPS = 0x00000000A80425FB  # containerd's (and Docker's) default set


@dataclass
class Pod:
    """A pod of the session daemon and the calls a test makes on it."""

    cri: CriClient
    id: str
    config: pb.PodSandboxConfig

    def start(self, cfg: pb.ContainerConfig) -> str:
        return run(self.cri, self.id, self.config, cfg)

    def create(self, cfg: pb.ContainerConfig) -> str:
        return create(self.cri, self.id, self.config, cfg)

    def output(self, cfg: pb.ContainerConfig) -> str:
        """Run a container to its exit (which must be 0); what it wrote."""
        st = wait_exit(self.cri, self.start(cfg))
        text = log_text(Path(st.log_path))
        assert (st.exit_code, st.reason) == (0, "Completed"), text
        return text

    def sleeper(self, image: str, **kw: object) -> str:
        """A running container that sleeps, for ExecSync."""
        cid = self.start(container_config(image, command=["sleep", "1000"], **kw))  # type: ignore[arg-type]
        wait_state(self.cri, cid, pb.CONTAINER_RUNNING)
        return cid

    def sh(self, cid: str, script: str) -> str:
        r = exec_sync(self.cri, cid, ["sh", "-c", script], timeout=20)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        return r.stdout.decode()


def make_pod(cri: CriClient, log_dir: Path, *, privileged: bool = False, **kw: object) -> Pod:
    cfg = pod_config(log_directory=str(log_dir), **kw)  # type: ignore[arg-type]
    cfg.linux.security_context.privileged = privileged
    return Pod(cri, run_pod(cri, cfg), cfg)


@pytest.fixture
def pod(pods: CriClient, tmp_path: Path) -> Pod:
    return make_pod(pods, tmp_path / "logs", hostname="spec-host")


@pytest.fixture
def bb(pod_images: TestImages) -> str:
    return pod_images.busybox.reference


@pytest.fixture
def cfg_image(pod_images: TestImages) -> str:
    return pod_images.config.reference


def sh(image: str, script: str, **kw: object) -> pb.ContainerConfig:
    return container_config(image, command=["sh", "-c", script], **kw)  # type: ignore[arg-type]


def root() -> pb.LinuxContainerSecurityContext:
    return SC(run_as_user=pb.Int64Value(value=0))


@contextlib.contextmanager
def nothing_left(pod: Pod, daemon: Crispyd) -> Iterator[None]:
    """The block may fail to make a container: then none is listed, and no bundle dir and
    no mount of it is left on the host."""
    bundles = daemon.state / "containers"
    before_dirs = set(os.listdir(bundles)) if bundles.exists() else set()
    before_mounts = host_state(daemon.base)["mounts"]
    try:
        yield
    finally:
        listed = pod.cri.runtime.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod.id))
        ).containers
        assert list(listed) == []
        assert (set(os.listdir(bundles)) if bundles.exists() else set()) == before_dirs
        assert host_state(daemon.base)["mounts"] == before_mounts


# -- process args, env, working dir ---------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        ([], [], "hello\n"),  # ENTRYPOINT ["/bin/sh", "-c"] + CMD ["echo hello"]
        ([], ["echo $0-$1", "a", "b"], "a-b\n"),  # args replace CMD, ENTRYPOINT stays
        (["echo", "cmd"], [], "cmd\n"),  # command replaces both: CMD is not appended
        (["echo"], ["x", "y"], "x y\n"),
    ],
)
def test_args_follow_kubelets_entrypoint_and_cmd_rules(
    pod: Pod, cfg_image: str, command: list[str], args: list[str], expected: str
) -> None:
    assert pod.output(container_config(cfg_image, command=command, args=args)) == expected


def test_env_image_cri_defaults(pod: Pod, cfg_image: str) -> None:
    env = dict(
        line.split("=", 1)
        for line in pod.output(container_config(cfg_image, command=["env"])).splitlines()
    )
    assert env["CRISPY_TEST"] == "1"
    assert env["PATH"] == DEFAULT_PATH.split("=", 1)[1]
    assert env["HOSTNAME"] == "spec-host"
    assert env["HOME"] == "/home/crispy"  # from the image's /etc/passwd
    out = pod.output(
        container_config(
            cfg_image, command=["env"], env={"CRISPY_TEST": "over", "NEW": "a b=c", "HOME": "/h"}
        )
    )
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert (env["CRISPY_TEST"], env["NEW"], env["HOME"]) == ("over", "a b=c", "/h")
    assert out.count("CRISPY_TEST=") == 1


def test_hostname_is_the_pods(pod: Pod, bb: str) -> None:
    assert pod.output(sh(bb, "hostname; cat /etc/hostname")) == "spec-host\nspec-host\n"


def test_pods_resolv_conf_and_hosts_are_bound(pods: CriClient, bb: str, tmp_path: Path) -> None:
    dns = pb.DNSConfig(servers=["10.9.9.9"], searches=["svc.test"])
    p = make_pod(pods, tmp_path / "logs", hostname="files-host", dns=dns)
    out = p.output(sh(bb, "cat /etc/resolv.conf; echo ---; cat /etc/hosts"))
    resolv, hosts = out.split("---\n")
    assert resolv.split("\n")[:2] == ["nameserver 10.9.9.9", "search svc.test"]
    assert any(line.split()[-1:] == ["files-host"] for line in hosts.splitlines())


def test_env_defaults_for_an_image_without_env(pod: Pod, pod_images: TestImages) -> None:
    ref = pod_images.layers.reference  # its config has no Env and no User
    pod.cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
    env = dict(
        line.split("=", 1)
        for line in pod.output(container_config(ref, command=["env"])).splitlines()
    )
    assert env == {"PATH": DEFAULT_PATH.split("=", 1)[1], "HOSTNAME": "spec-host", "HOME": "/root"}


def test_working_dir_from_image_created_and_cri_wins(pod: Pod, cfg_image: str) -> None:
    # /work is not in the image: the runtime makes it
    assert pod.output(container_config(cfg_image, command=["pwd"])) == "/work\n"
    out = pod.output(container_config(cfg_image, command=["pwd"], working_dir="/home/crispy"))
    assert out == "/home/crispy\n"


def test_working_dir_created_in_a_readonly_rootfs(pod: Pod, cfg_image: str) -> None:
    sec = SC(readonly_rootfs=True, run_as_user=pb.Int64Value(value=0))
    assert pod.output(container_config(cfg_image, command=["pwd"], security=sec)) == "/work\n"


# -- users and groups ------------------------------------------------------------------------

# the kernel keeps the groups sorted: so does the output
ID_SCRIPT = 'echo "$(id -u) $(id -g) [$(id -G | tr " " "\\n" | sort -n | xargs)] $HOME"'


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        # image USER crispy: 1234:5678, and /etc/group lists it in "extra" (4321)
        (SC(), "1234 5678 [4321 5678] /home/crispy"),
        (SC(run_as_user=pb.Int64Value(value=0)), "0 0 [0] /root"),
        (SC(run_as_username="crispy"), "1234 5678 [4321 5678] /home/crispy"),
        (SC(run_as_user=pb.Int64Value(value=4242)), "4242 0 [0] /"),  # no passwd entry
        (
            SC(run_as_user=pb.Int64Value(value=1234), run_as_group=pb.Int64Value(value=99)),
            "1234 99 [99 4321] /home/crispy",
        ),
        (SC(supplemental_groups=[100, 200]), "1234 5678 [100 200 4321 5678] /home/crispy"),
        (
            SC(
                supplemental_groups=[100],
                supplemental_groups_policy=pb.SupplementalGroupsPolicy.Strict,
            ),
            "1234 5678 [100 5678] /home/crispy",
        ),
    ],
    ids=["image", "uid0", "username", "uid-no-entry", "group", "supplemental", "strict"],
)
def test_user_and_groups(pod: Pod, cfg_image: str, security: SC, expected: str) -> None:
    assert pod.output(sh(cfg_image, ID_SCRIPT, security=security)) == expected + "\n"


# -- read-only rootfs, capabilities, masked paths --------------------------------------------


def test_readonly_rootfs_but_mounts_writable(pod: Pod, bb: str, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = "touch /x 2>&1 || echo rootfs-ro; touch /scratch/y && echo scratch-rw"
    out = pod.output(
        sh(
            bb,
            script,
            security=SC(readonly_rootfs=True),
            mounts=[pb.Mount(container_path="/scratch", host_path=str(scratch))],
        )
    )
    assert out.splitlines()[-2:] == ["rootfs-ro", "scratch-rw"], out
    assert (scratch / "y").exists()


def caps_of(status_text: str) -> dict[str, int]:
    return {
        k: int(v, 16)
        for k, _, v in (line.partition(":\t") for line in status_text.splitlines())
        if k in ("CapEff", "CapBnd", "CapPrm")
    }


CAPS = "grep ^Cap /proc/self/status"


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (pb.Capability(), DOCKER_DEFAULT_CAPS),
        (pb.Capability(add_capabilities=["NET_ADMIN"]), DOCKER_DEFAULT_CAPS | 1 << 12),
        (pb.Capability(drop_capabilities=["ALL"]), 0),
        (pb.Capability(drop_capabilities=["ALL"], add_capabilities=["CHOWN"]), 1),
        (pb.Capability(drop_capabilities=["KILL", "chown"]), DOCKER_DEFAULT_CAPS & ~(1 << 5 | 1)),
    ],
    ids=["default", "add-net-admin", "drop-all", "drop-all-add-chown", "drop-some"],
)
def test_capabilities(pod: Pod, bb: str, caps: pb.Capability, expected: int) -> None:
    got = caps_of(pod.output(sh(bb, CAPS, security=SC(capabilities=caps))))
    assert got == {"CapEff": expected, "CapBnd": expected, "CapPrm": expected}


MASK_SCRIPT = (
    "stat -c %t,%T /proc/keys /proc/timer_list; grep -E ' /sys | /proc/acpi | /proc/sys ' "
    "/proc/self/mounts | cut -d' ' -f2-4"
)


def test_masked_and_readonly_paths(pod: Pod, bb: str) -> None:
    out = pod.output(sh(bb, MASK_SCRIPT))
    lines = out.splitlines()
    assert lines[:2] == ["1,3", "1,3"]  # bound to /dev/null
    mounts = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert mounts["/sys"][0] == "sysfs" and mounts["/sys"][1].startswith("ro,")
    assert mounts["/proc/sys"][1].startswith("ro,")
    if Path("/proc/acpi").is_dir():
        assert mounts["/proc/acpi"][0] == "tmpfs" and mounts["/proc/acpi"][1].startswith("ro,")


def host_devices() -> set[str]:
    """The char and block devices right in the host's /dev."""
    return {
        e.name
        for e in os.scandir("/dev")
        if stat.S_ISCHR(e.stat(follow_symlinks=False).st_mode)
        or stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode)
    }


# what runc makes in every container's /dev (ptmx: a link to pts/ptmx)
DEFAULT_DEVICES = {"null", "zero", "full", "random", "urandom", "tty", "ptmx"}


def test_devices_of_a_normal_container(pod: Pod, bb: str) -> None:
    devs = set(pod.output(sh(bb, "ls /dev")).split())
    assert devs >= DEFAULT_DEVICES
    assert not devs & (host_devices() - DEFAULT_DEVICES - {"console"})  # no host device


def test_privileged_has_every_cap_rw_sys_and_no_masks(
    pods: CriClient, bb: str, tmp_path: Path, pod_crispyd: Crispyd
) -> None:
    p = make_pod(pods, tmp_path / "logs", privileged=True)
    devs = set(p.output(sh(bb, "ls /dev", security=SC(privileged=True))).split())
    assert host_devices() - {"console"} <= devs
    out = p.output(sh(bb, f"{CAPS}; {MASK_SCRIPT}", security=SC(privileged=True)))
    assert pod_crispyd.proc is not None
    daemon = caps_of(Path(f"/proc/{pod_crispyd.proc.pid}/status").read_text())
    assert caps_of(out) == {k: daemon["CapEff"] for k in ("CapEff", "CapBnd", "CapPrm")}
    lines = [line for line in out.splitlines() if not line.startswith("Cap")]
    assert lines[:2] == ["0,0", "0,0"]  # the real /proc files
    mounts = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert mounts["/sys"][1].startswith("rw,")
    assert "/proc/acpi" not in mounts and "/proc/sys" not in mounts


def test_privileged_container_needs_a_privileged_pod(pod: Pod, bb: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        pod.create(sh(bb, "true", security=SC(privileged=True)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- seccomp ---------------------------------------------------------------------------------

UNSHARE = "unshare -U true 2>&1 && echo allowed || echo denied"
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
RUNTIME_DEFAULT = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)


@pytest.mark.parametrize(
    ("profile", "add", "expected"),
    [
        (UNCONFINED, [], "allowed"),
        (RUNTIME_DEFAULT, [], "denied"),
        (RUNTIME_DEFAULT, ["SYS_ADMIN"], "allowed"),  # its rules depend on the caps held
    ],
    ids=["unconfined", "runtime-default", "runtime-default-sys-admin"],
)
def test_seccomp_runtime_default_blocks_unshare(
    pod: Pod, bb: str, profile: pb.SecurityProfile, add: list[str], expected: str
) -> None:
    # The kernel lets an unprivileged process make a user namespace (unconfined proves
    # it), so a denial under RuntimeDefault is the profile's.
    sec = SC(seccomp=profile, capabilities=pb.Capability(add_capabilities=add))
    out = pod.output(sh(bb, UNSHARE, security=sec))
    assert out.splitlines()[-1] == expected, out


def test_seccomp_localhost_profile(pod: Pod, bb: str, tmp_path: Path) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    sec = SC(
        seccomp=pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(profile)
        )
    )
    script = "mkdir /tmp/x 2>&1 && echo made || echo denied; touch /tmp/f && echo touched"
    out = pod.output(sh(bb, script, security=sec))
    assert out.splitlines()[-2:] == ["denied", "touched"], out
    assert "Operation not permitted" in out


# -- sysctls and resources -------------------------------------------------------------------


def test_pod_sysctl_seen_by_its_containers(pods: CriClient, bb: str, tmp_path: Path) -> None:
    p = make_pod(pods, tmp_path / "logs", sysctls={"net.ipv4.ip_unprivileged_port_start": "1234"})
    out = p.output(sh(bb, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"))
    assert out == "1234\n"


def test_memory_limit_oom_killed(pod: Pod, bb: str) -> None:
    res = pb.LinuxContainerResources(
        memory_limit_in_bytes=32 * MiB, memory_swap_limit_in_bytes=32 * MiB
    )
    script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; tail /dev/zero"
    cid = pod.start(sh(bb, script, resources=res))
    st = wait_exit(pod.cri, cid, timeout=30)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    if CGROUP_V1:
        assert log_text(Path(st.log_path)).splitlines()[0] == str(32 * MiB)


def test_oom_score_adj(pod: Pod, bb: str) -> None:
    res = pb.LinuxContainerResources(oom_score_adj=742)
    assert pod.output(sh(bb, "cat /proc/self/oom_score_adj", resources=res)) == "742\n"


@pytest.mark.skipif(not CGROUP_V1, reason="reads the cgroup v1 cpu controller's files")
def test_cpu_quota_period_and_shares(pod: Pod, bb: str) -> None:
    res = pb.LinuxContainerResources(cpu_quota=25000, cpu_period=50000, cpu_shares=512)
    script = "cd /sys/fs/cgroup/cpu && cat cpu.cfs_quota_us cpu.cfs_period_us cpu.shares"
    assert pod.output(sh(bb, script, resources=res)).split() == ["25000", "50000", "512"]


# -- mounts ----------------------------------------------------------------------------------


def test_bind_mounts_rw_and_ro(pod: Pod, bb: str, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "given").write_text("from host\n")
    script = "echo inside > /rw/made; cat /ro/given; touch /ro/no 2>/dev/null || echo ro-refused"
    out = pod.output(
        sh(
            bb,
            script,
            mounts=[
                pb.Mount(container_path="/rw", host_path=str(rw)),
                pb.Mount(container_path="/ro", host_path=str(ro), readonly=True),
            ],
        )
    )
    assert out == "from host\nro-refused\n"
    assert (rw / "made").read_text() == "inside\n"
    assert not (ro / "no").exists()


def test_nested_mounts_are_mounted_shallow_first(pod: Pod, bb: str, tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (outer / "o").write_text("")
    (inner / "i").write_text("")
    mounts = [  # the deeper one first: it must not end up hidden under the other
        pb.Mount(container_path="/mnt/a/b", host_path=str(inner)),
        pb.Mount(container_path="/mnt/a", host_path=str(outer)),
    ]
    out = pod.output(sh(bb, "ls /mnt/a /mnt/a/b", mounts=mounts))
    assert out.split() == ["/mnt/a:", "b", "o", "/mnt/a/b:", "i"]


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def _umount_all(*paths: Path) -> None:
    for p in paths:
        for _ in range(4):  # stacked mounts: until there is none
            if subprocess.run(["umount", "-l", str(p)], capture_output=True).returncode:
                break


@contextlib.contextmanager
def shared_dir(path: Path) -> Iterator[Path]:
    """`path` made a mount point of its own with shared propagation (unmounted after)."""
    (path / "sub").mkdir(parents=True)
    _mount("--bind", str(path), str(path))
    try:
        _mount("--make-shared", str(path))
        yield path
    finally:
        _umount_all(path / "sub", path)


def _poll(fn: Callable[[], str], want: str, timeout: float = 10) -> str:
    """fn() once it returns `want`; what it last returned after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_propagation_host_to_container(pod: Pod, bb: str, tmp_path: Path) -> None:
    with shared_dir(tmp_path / "h2c") as src:
        mount = pb.Mount(
            container_path="/mnt/h2c",
            host_path=str(src),
            propagation=pb.PROPAGATION_HOST_TO_CONTAINER,
        )
        cid = pod.sleeper(bb, mounts=[mount])
        assert pod.sh(cid, "ls /mnt/h2c/sub") == ""
        _mount("-t", "tmpfs", "tmpfs", str(src / "sub"))
        (src / "sub" / "marker").write_text("x")
        assert _poll(lambda: pod.sh(cid, "ls /mnt/h2c/sub"), "marker\n") == "marker\n"


def test_propagation_bidirectional(pod: Pod, bb: str, tmp_path: Path) -> None:
    with shared_dir(tmp_path / "bidi") as src:
        mount = pb.Mount(
            container_path="/mnt/bidi",
            host_path=str(src),
            propagation=pb.PROPAGATION_BIDIRECTIONAL,
        )
        sec = SC(capabilities=pb.Capability(add_capabilities=["SYS_ADMIN"]))
        cid = pod.sleeper(bb, mounts=[mount], security=sec)
        pod.sh(cid, "mount -t tmpfs tmpfs /mnt/bidi/sub && echo x > /mnt/bidi/sub/marker")
        seen = _poll(lambda: " ".join(os.listdir(src / "sub")), "marker")
        assert seen == "marker"
        assert (src / "sub" / "marker").read_text() == "x\n"


def test_private_mount_does_not_propagate(pod: Pod, bb: str, tmp_path: Path) -> None:
    with shared_dir(tmp_path / "priv") as src:
        mount = pb.Mount(container_path="/mnt/p", host_path=str(src))
        sec = SC(capabilities=pb.Capability(add_capabilities=["SYS_ADMIN"]))
        cid = pod.sleeper(bb, mounts=[mount], security=sec)
        _mount("-t", "tmpfs", "tmpfs", str(src / "sub"))
        (src / "sub" / "from-host").write_text("x")
        time.sleep(0.2)
        assert pod.sh(cid, "ls /mnt/p/sub") == ""  # the host's mount is not seen
        pod.sh(cid, "mount -t tmpfs tmpfs /mnt/p/sub && touch /mnt/p/sub/from-ctr")
        time.sleep(0.2)
        assert os.listdir(src / "sub") == ["from-host"]  # nor the container's on the host


@pytest.mark.parametrize(
    "propagation", [pb.PROPAGATION_BIDIRECTIONAL, pb.PROPAGATION_HOST_TO_CONTAINER]
)
def test_propagation_from_a_private_host_mount_is_refused(
    pod: Pod,
    bb: str,
    tmp_path: Path,
    pod_crispyd: Crispyd,
    propagation: pb.MountPropagation.ValueType,
) -> None:
    # tmp_path is on a private mount here (as on most hosts outside systemd's /)
    if host_mount_propagation(str(tmp_path)) != "private":
        pytest.skip("tmp_path is not on a private mount on this host")
    mount = pb.Mount(container_path="/mnt/p", host_path=str(tmp_path), propagation=propagation)
    with nothing_left(pod, pod_crispyd), pytest.raises(grpc.RpcError) as e:
        pod.create(container_config(bb, command=["true"], mounts=[mount]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "but its mount is private" in e.value.details()


# -- image volumes ---------------------------------------------------------------------------


def test_image_volume_is_a_writable_dir_of_each_container(pod: Pod, cfg_image: str) -> None:
    a = pod.sleeper(cfg_image, security=root())
    b = pod.sleeper(cfg_image, security=root())
    pod.sh(a, "echo a > /data/a")
    pod.sh(b, "echo b > /data/b")
    assert pod.sh(a, "ls /data") == "a\n"
    assert pod.sh(b, "ls /data") == "b\n"
    assert "/data" in pod.sh(a, "cut -d' ' -f2 /proc/self/mounts").split()


def _volume_image(registry: Registry) -> str:
    """busybox, USER 1234, and VOLUME /data on a dir of the image that holds a file and
    belongs to that user (as `RUN mkdir /data && chown app /data` would leave it)."""
    layer = (
        LayerBuilder()
        .dir("data", mode=0o750, uid=1234, gid=5678)
        .file("data/seed", "from the image\n", uid=1234, gid=5678)
        .build()
    )
    layers = [busybox_layer(), layer]
    config = image_config(
        layers, env=[DEFAULT_PATH], user="1234:5678", volumes={"/data": {}}, history=["a", "b"]
    )
    repo = f"crispy-test/volume-{secrets.token_hex(4)}"
    return push_image(registry, repo, "latest", layers, config).reference


def test_image_volume_starts_with_the_images_content_and_owner(
    pod: Pod, registry: Registry
) -> None:
    ref = _volume_image(registry)
    pod.cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
    script = "stat -c '%u:%g %a' /data; cat /data/seed; touch /data/new && echo writable"
    out = pod.output(sh(ref, script))
    assert out == "1234:5678 750\nfrom the image\nwritable\n"


# -- exec ------------------------------------------------------------------------------------


def test_exec_runs_as_the_containers_user(pod: Pod, cfg_image: str) -> None:
    cid = pod.sleeper(cfg_image)
    assert pod.sh(cid, ID_SCRIPT) == "1234 5678 [4321 5678] /home/crispy\n"
    assert pod.sh(cid, "pwd; echo $CRISPY_TEST") == "/work\n1\n"


def test_exec_holds_only_stdio_fds(pod: Pod, bb: str) -> None:
    cid = pod.sleeper(bb)
    # ls itself opens one directory fd (3) to list the others
    assert pod.sh(cid, "ls /proc/self/fd").split() == ["0", "1", "2", "3"]


def test_exec_output_is_capped_at_16_mib(pod: Pod, bb: str) -> None:
    cid = pod.sleeper(bb)
    r = exec_sync(pod.cri, cid, ["head", "-c", "20000000", "/dev/zero"], timeout=30)
    assert r.exit_code == 0
    assert len(r.stdout) == 16 * MiB


# -- bad requests leave nothing behind -------------------------------------------------------


@pytest.mark.parametrize(
    "cfg_kw",
    [
        {"security": SC(run_as_user=pb.Int64Value(value=2147483648))},
        {"security": SC(run_as_group=pb.Int64Value(value=1))},  # group without a user
        {"env": {"EVIL": "a\nb"}},
        {"working_dir": "relative"},
        {"command": ["echo", "nul\x00byte"]},
        {"mounts": [pb.Mount(container_path="/x/../etc", host_path="/tmp")]},
        {
            "security": SC(
                seccomp=pb.SecurityProfile(
                    profile_type=pb.SecurityProfile.Localhost, localhost_ref="/nonexistent.json"
                )
            )
        },
    ],
    ids=[
        "uid-2^31",
        "group-only",
        "env-newline",
        "relative-cwd",
        "nul-arg",
        "dotdot-mount",
        "missing-seccomp-profile",
    ],
)
def test_invalid_config_is_refused_and_leaves_nothing(
    pod: Pod, bb: str, pod_crispyd: Crispyd, cfg_kw: dict[str, object]
) -> None:
    with nothing_left(pod, pod_crispyd), pytest.raises(grpc.RpcError) as e:
        pod.create(container_config(bb, **cfg_kw))  # type: ignore[arg-type]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


# -- a hostile image -------------------------------------------------------------------------


def _hostile_image(registry: Registry, escape: Path, escape2: Path) -> str:
    b = LayerBuilder()
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        b.dir(d)
    b.file("bin/busybox", Path("/bin/busybox").read_bytes(), mode=0o755)
    for applet in busybox_applets():
        b.hardlink(f"bin/{applet}", "bin/busybox")
    b.symlink("etc", "../../../../../../.." + str(escape))
    b.symlink("data2", str(escape2))
    layers = [b.build()]
    config = image_config(
        layers,
        env=[DEFAULT_PATH],
        cmd=["sh", "-c", "echo ran; ls /etc"],
        volumes={"/etc/evil": {}, "/data2": {}},
        history=["hostile"],
    )
    repo = f"crispy-test/hostile-{secrets.token_hex(4)}"
    return push_image(registry, repo, "latest", layers, config).reference


def test_hostile_image_symlinks_do_not_escape(pod: Pod, registry: Registry) -> None:
    # /etc -> ../../../../../../../tmp/crispy-escape-X and /data2 -> /tmp/crispy-escape2-X,
    # with VOLUMEs below them and the pod's /etc/hosts, resolv.conf and hostname bound in:
    # every one must land inside the rootfs, none on the host.
    tag = secrets.token_hex(6)
    escape = Path(f"/tmp/crispy-escape-{tag}")  # exists: nothing may appear in it
    escape2 = Path(f"/tmp/crispy-escape2-{tag}")  # absent: it must stay so
    escape.mkdir()
    try:
        ref = _hostile_image(registry, escape, escape2)
        pod.cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60)
        try:
            outcomes = []
            for cwd in ("", "/data2/wd"):
                try:
                    cid = pod.start(container_config(ref, working_dir=cwd))
                except grpc.RpcError as e:  # failing cleanly is fine
                    outcomes.append(f"refused: {e.details()}")
                    continue
                st = wait_exit(pod.cri, cid)
                outcomes.append(f"{st.reason}: {log_text(Path(st.log_path))}")
            assert os.listdir(escape) == [], outcomes
            assert not escape2.exists(), outcomes
        finally:
            pod.cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
            pod.cri.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    finally:
        shutil.rmtree(escape, ignore_errors=True)
        shutil.rmtree(escape2, ignore_errors=True)
