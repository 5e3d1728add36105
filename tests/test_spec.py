"""CRI → OCI spec translation (oci/spec.py): no root, no daemon.

Each concern has focused tests; four golden config.json files (tests/golden/spec/) pin
whole specs. CRISPY_UPDATE_GOLDEN=1 rewrites them (review the diff!).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from crispy import errors
from crispy.api import pb
from crispy.oci import seccomp, users
from crispy.oci import spec as specmod
from crispy.oci.spec import build_spec, exec_process, image_volumes
from support.spec_context import make_ctx

GOLDEN = Path(__file__).parent / "golden" / "spec"
ALL_DEFAULT_CAPS = list(specmod.DEFAULT_CAPS)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment, and a malformed line next
broken:x:notanumber:0::/:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
nohome:x:1001:1001::
"""
GROUP = """\
root:x:0:
daemon:x:1:
wheel:x:10:root,app
audio:x:29:bob, app
app:x:1000:
nohome:x:1001:
staff:x:50:
"""

# Host devices as the fake host reports them (no real /dev is read in these tests).
FAKE_DEVICES = {
    "/dev/fuse": ("c", 10, 229, 0o666),
    "/dev/sda": ("b", 8, 0, 0o660),
    "/dev/net/tun": ("c", 10, 200, 0o666),
}


def _fake_device(path: str, *, follow: bool = True) -> dict[str, Any] | None:
    if path not in FAKE_DEVICES:
        if path.startswith("/dev/") and path != "/dev/net":
            raise FileNotFoundError(2, "No such file or directory", path)
        return None
    kind, major, minor, mode = FAKE_DEVICES[path]
    return {
        "path": path,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": mode,
        "uid": 0,
        "gid": 0,
    }


def _fake_devices(top: str = "/dev") -> list[dict[str, Any]]:
    found = [_fake_device(p) for p in sorted(FAKE_DEVICES) if p.startswith(top + "/")]
    return [d for d in found if d is not None]


@pytest.fixture(autouse=True)
def fake_host_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specmod, "host_device", _fake_device)
    monkeypatch.setattr(specmod, "host_devices", _fake_devices)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def container(**kw: Any) -> pb.ContainerConfig:
    kw.setdefault("metadata", pb.ContainerMetadata(name="app", attempt=0))
    kw.setdefault("image", pb.ImageSpec(image="docker.io/library/app:1"))
    return pb.ContainerConfig(**kw)


def security(**kw: Any) -> pb.LinuxContainerConfig:
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))


def sandbox(privileged: bool = False, **kw: Any) -> pb.PodSandboxConfig:
    kw.setdefault("metadata", pb.PodSandboxMetadata(name="web-0", uid="u1", namespace="default"))
    kw.setdefault("hostname", "web-0")
    s = pb.PodSandboxConfig(**kw)
    s.linux.security_context.privileged = privileged
    return s


IMAGE: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": ["/entry.sh"],
        "Cmd": ["serve", "--port=80"],
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "WorkingDir": "/srv",
        "User": "",
        "Labels": {"org.example.secret-label": "label-value-xyz"},
    },
}


def image(**cfg: Any) -> dict[str, Any]:
    return {**IMAGE, "config": {**IMAGE["config"], **cfg}}


def build(
    rootfs: Path,
    config: pb.ContainerConfig | None = None,
    *,
    img: dict[str, Any] | None = None,
    pod: pb.PodSandboxConfig | None = None,
    **ctx: Any,
) -> dict[str, Any]:
    return build_spec(
        config if config is not None else container(),
        pod if pod is not None else sandbox(),
        img if img is not None else IMAGE,
        make_ctx(rootfs, **ctx),
    )


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])


def mount_at(spec: dict[str, Any], dest: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == dest]
    assert len(found) == 1, (dest, found)
    return found[0]


def check_golden(name: str, spec: dict[str, Any], rootfs: Path) -> None:
    text = json.dumps(spec, indent=1) + "\n"
    text = text.replace(str(rootfs), "/ROOTFS")
    path = GOLDEN / f"{name}.json"
    if os.environ.get("CRISPY_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with CRISPY_UPDATE_GOLDEN=1"
    assert json.loads(text) == json.loads(path.read_text()), (
        f"{name}: spec differs from {path} (CRISPY_UPDATE_GOLDEN=1 rewrites it)"
    )


# -- process args ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "want"),
    [
        ([], [], ["/entry.sh", "serve", "--port=80"]),
        (["/bin/sh", "-c"], [], ["/bin/sh", "-c"]),  # image CMD and ENTRYPOINT ignored
        (["/bin/sh"], ["-c", "true"], ["/bin/sh", "-c", "true"]),
        ([], ["debug"], ["/entry.sh", "debug"]),  # ENTRYPOINT + CRI args
    ],
)
def test_args_follow_kubelet_rules(
    rootfs: Path, command: list[str], args: list[str], want: list[str]
) -> None:
    spec = build(rootfs, container(command=command, args=args))
    assert spec["process"]["args"] == want


def test_args_empty_entrypoint_resets_it(rootfs: Path) -> None:
    spec = build(rootfs, img=image(Entrypoint=[""], Cmd=["run"]))
    assert spec["process"]["args"] == ["run"]


def test_no_command_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="no command specified"):
        build(rootfs, img=image(Entrypoint=None, Cmd=None))


def test_bad_image_entrypoint_and_nul_args(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="Entrypoint"):
        build(rootfs, img=image(Entrypoint="/entry.sh"))
    with pytest.raises(errors.InvalidArgument, match="NUL"):
        build(rootfs, container(command=["/bin/sh\x00x"]))


# -- env ---------------------------------------------------------------------------------


def test_env_image_then_cri_by_key(rootfs: Path) -> None:
    envs = [pb.KeyValue(key="LANG", value="en_US"), pb.KeyValue(key="NEW", value="a=b")]
    spec = build(rootfs, container(envs=envs))
    assert spec["process"]["env"] == [
        "PATH=/usr/bin:/bin",
        "HOSTNAME=web-0",
        "LANG=en_US",
        "NEW=a=b",
        "HOME=/root",
    ]


def test_env_path_default_and_home_kept(rootfs: Path) -> None:
    envs = [pb.KeyValue(key="HOME", value="/data")]
    spec = build(rootfs, container(envs=envs), img=image(Env=None))
    env = env_of(spec)
    assert env["PATH"] == specmod.DEFAULT_PATH
    assert env["HOME"] == "/data"


def test_env_hostname_for_host_network_is_the_pods_or_the_nodes(rootfs: Path) -> None:
    spec = build(rootfs, hostname="", utsns="", pod=sandbox(hostname="node-a"))
    assert env_of(spec)["HOSTNAME"] == "node-a"
    assert "hostname" not in spec
    spec = build(rootfs, hostname="", utsns="", pod=sandbox(hostname=""))
    assert env_of(spec)["HOSTNAME"] == "node-1"


def test_env_image_key_without_value_unsets(rootfs: Path) -> None:
    spec = build(rootfs, img=image(Env=["LANG=C", "LANG"]))
    assert "LANG" not in env_of(spec)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("A", "x\ny", "NUL or newline"),
        ("A", "x\x00y", "NUL or newline"),
        ("A=B", "x", "bad variable name"),
        ("", "x", "bad variable name"),
        ("A\nB", "x", "bad variable name"),
        ("HOME", "/home/x\nLD_PRELOAD=/evil.so", "NUL or newline"),
    ],
)
def test_env_rejects_newlines_nul_and_equals(
    rootfs: Path, key: str, value: str, match: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, container(envs=[pb.KeyValue(key=key, value=value)]))


def test_env_image_newline_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="image config Env"):
        build(rootfs, img=image(Env=["A=1\nB=2"]))


# -- working dir -------------------------------------------------------------------------


def test_cwd_cri_then_image_then_root(rootfs: Path) -> None:
    assert build(rootfs, container(working_dir="/work"))["process"]["cwd"] == "/work"
    assert build(rootfs)["process"]["cwd"] == "/srv"
    assert build(rootfs, img=image(WorkingDir=""))["process"]["cwd"] == "/"
    with pytest.raises(errors.InvalidArgument, match="working_dir"):
        build(rootfs, container(working_dir="rel"))


# -- user and groups ---------------------------------------------------------------------


def user_of(spec: dict[str, Any]) -> tuple[int, int, list[int], str]:
    u = spec["process"]["user"]
    return u["uid"], u["gid"], u["additionalGids"], env_of(spec)["HOME"]


@pytest.mark.parametrize(
    ("image_user", "want"),
    [
        ("", (0, 0, [0, 10], "/root")),
        ("app", (1000, 1000, [1000, 10, 29], "/home/app")),
        ("1000", (1000, 1000, [1000, 10, 29], "/home/app")),
        ("app:staff", (1000, 50, [50, 10, 29], "/home/app")),
        ("app:7", (1000, 7, [7, 10, 29], "/home/app")),
        ("1000:1000", (1000, 1000, [1000, 10, 29], "/home/app")),
        ("4242", (4242, 0, [0], "/")),  # a uid without a passwd entry is fine
        ("4242:99", (4242, 99, [99], "/")),
        ("nohome", (1001, 1001, [1001], "/")),
    ],
)
def test_image_user_forms(rootfs: Path, image_user: str, want: tuple[Any, ...]) -> None:
    assert user_of(build(rootfs, img=image(User=image_user))) == want


def test_run_as_user_overrides_image_user(rootfs: Path) -> None:
    cfg = container(linux=security(run_as_user=pb.Int64Value(value=1)))
    assert user_of(build(rootfs, cfg, img=image(User="app"))) == (1, 1, [1], "/usr/sbin")
    cfg = container(linux=security(run_as_user=pb.Int64Value(value=0)))
    assert user_of(build(rootfs, cfg, img=image(User="app")))[:2] == (0, 0)


def test_run_as_username_and_group(rootfs: Path) -> None:
    cfg = container(linux=security(run_as_username="app", run_as_group=pb.Int64Value(value=2000)))
    assert user_of(build(rootfs, cfg)) == (1000, 2000, [2000, 10, 29], "/home/app")


def test_unknown_usernames_and_groups_are_named(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"run_as_username.*'ghost'"):
        build(rootfs, container(linux=security(run_as_username="ghost")))
    with pytest.raises(errors.InvalidArgument, match=r"image config User.*'ghost'"):
        build(rootfs, img=image(User="ghost"))
    with pytest.raises(errors.InvalidArgument, match="no group 'nogroup'"):
        build(rootfs, img=image(User="app:nogroup"))
    with pytest.raises(errors.InvalidArgument, match="user\\[:group\\]"):
        build(rootfs, img=image(User="a:b:c"))


def test_run_as_group_alone_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="run_as_group"):
        build(rootfs, container(linux=security(run_as_group=pb.Int64Value(value=5))))


def test_supplemental_groups_merge_and_strict(rootfs: Path) -> None:
    sc: dict[str, Any] = dict(run_as_user=pb.Int64Value(value=1000), supplemental_groups=[500, 10])
    merged = build(rootfs, container(linux=security(**sc)))
    assert merged["process"]["user"]["additionalGids"] == [1000, 10, 29, 500]
    strict = build(
        rootfs,
        container(
            linux=security(**sc, supplemental_groups_policy=pb.SupplementalGroupsPolicy.Strict)
        ),
    )
    assert strict["process"]["user"]["additionalGids"] == [1000, 500, 10]


@pytest.mark.parametrize(
    "sc",
    [
        dict(run_as_user=pb.Int64Value(value=2**31)),
        dict(run_as_user=pb.Int64Value(value=-1)),
        dict(run_as_user=pb.Int64Value(value=0), run_as_group=pb.Int64Value(value=2**31)),
        dict(run_as_user=pb.Int64Value(value=0), supplemental_groups=[2**31]),
    ],
)
def test_ids_above_2_31_are_invalid(rootfs: Path, sc: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        build(rootfs, container(linux=security(**sc)))


def test_image_uid_above_2_31_is_invalid(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        build(rootfs, img=image(User="2147483648"))
    (rootfs / "etc" / "passwd").write_text("big:x:4294967294:0::/:/bin/sh\n")
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        build(rootfs, img=image(User="big"))


def test_passwd_symlink_to_host_path_is_read_inside_rootfs(rootfs: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "shadow").write_text("app:x:6666:6666::/host:/bin/sh\n")
    (rootfs / "etc" / "shadow").write_text("app:x:3000:3000::/inside:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to(host / "shadow")  # an absolute host path
    # /tmp/.../host-etc/shadow names <rootfs>/tmp/.../host-etc/shadow: missing
    with pytest.raises(errors.InvalidArgument, match="no user 'app'"):
        build(rootfs, img=image(User="app"))
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/etc/shadow")  # the image's own shadow
    assert user_of(build(rootfs, img=image(User="app")))[:2] == (3000, 3000)


def test_passwd_symlink_climbing_out_stays_inside(rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("app:x:6666:6666::/host:/bin/sh\n")  # beside rootfs
    (rootfs / "passwd").write_text("app:x:3001:3001::/inside:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("../../../../../../passwd")
    assert user_of(build(rootfs, img=image(User="app"))) == (3001, 3001, [3001, 10, 29], "/inside")


def test_etc_dir_symlink_is_followed_inside_rootfs(rootfs: Path, tmp_path: Path) -> None:
    os.rename(rootfs / "etc", rootfs / "real-etc")
    (rootfs / "etc").symlink_to("/../real-etc")
    assert user_of(build(rootfs, img=image(User="app")))[:2] == (1000, 1000)
    (rootfs / "etc").unlink()
    (rootfs / "etc").symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.InvalidArgument, match="no user 'app'"):
        build(rootfs, img=image(User="app"))


def test_passwd_symlink_loop_and_fifo_are_refused(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("passwd")
    with pytest.raises(errors.InvalidArgument, match="too many levels"):
        build(rootfs, img=image(User="app"))
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")  # opening it would block: it must not be opened
    with pytest.raises(errors.InvalidArgument, match="not a regular file"):
        build(rootfs, img=image(User="app"))


def test_huge_etc_group_is_refused(rootfs: Path) -> None:
    with open(rootfs / "etc" / "group", "r+b") as f:
        f.truncate(users.MAX_FILE_SIZE + 1)  # sparse: costs nothing to make
    with pytest.raises(errors.InvalidArgument, match=r"/etc/group of the image is \d+ bytes"):
        build(rootfs, img=image(User="app"))


def test_no_passwd_numeric_user_is_fine(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    assert user_of(build(rootfs, img=image(User="123:456"))) == (123, 456, [456], "/")
    with pytest.raises(errors.InvalidArgument, match="no user 'app'"):
        build(rootfs, img=image(User="app"))


# -- mounts ------------------------------------------------------------------------------


def test_default_mounts_and_pod_files(rootfs: Path) -> None:
    spec = build(rootfs)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests[:6] == ["/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert mount_at(spec, "/sys")["options"][-1] == "ro"
    assert mount_at(spec, "/sys/fs/cgroup")["type"] == "cgroup"
    assert mount_at(spec, "/etc/hosts") == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": "/run/crispy/pods/p0d/hosts",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mount_at(spec, "/dev/shm")["source"] == "/run/crispy/pods/p0d/shm"
    assert mount_at(spec, "/etc/resolv.conf")["source"] == "/run/crispy/pods/p0d/resolv.conf"
    assert mount_at(spec, "/etc/hostname")["source"] == "/run/crispy/pods/p0d/hostname"


def test_readonly_rootfs_makes_pod_files_readonly(rootfs: Path) -> None:
    spec = build(rootfs, container(linux=security(readonly_rootfs=True)))
    assert spec["root"]["readonly"] is True
    assert mount_at(spec, "/etc/hosts")["options"][-1] == "ro"
    assert mount_at(spec, "/dev/shm")["options"][-1] == "rw"


def test_cri_mount_replaces_pod_file_and_dev_mount_drops_dev_defaults(rootfs: Path) -> None:
    mounts = [
        pb.Mount(container_path="/etc/hosts", host_path="/srv/hosts"),
        pb.Mount(container_path="/dev/", host_path="/srv/dev"),
    ]
    spec = build(rootfs, container(mounts=mounts))
    assert mount_at(spec, "/etc/hosts")["source"] == "/srv/hosts"
    assert mount_at(spec, "/dev")["source"] == "/srv/dev"
    dests = [m["destination"] for m in spec["mounts"]]
    assert "/dev/pts" not in dests and "/dev/mqueue" not in dests
    assert mount_at(spec, "/dev/shm")["type"] == "bind"  # the pod's, still


def test_host_network_pod_keeps_its_files(rootfs: Path) -> None:
    spec = build(rootfs, netns="", utsns="", hostname="")
    assert mount_at(spec, "/etc/resolv.conf")["source"].startswith("/run/crispy/pods/")
    spec = build(rootfs, hosts="", shm="")
    assert "/etc/hosts" not in [m["destination"] for m in spec["mounts"]]
    assert mount_at(spec, "/dev/shm")["type"] == "tmpfs"  # no pod shm: the default


@pytest.mark.parametrize(
    ("props", "options", "rootfs_prop"),
    [
        ([pb.PROPAGATION_PRIVATE], ["rbind", "rprivate", "rw"], None),
        ([pb.PROPAGATION_HOST_TO_CONTAINER], ["rbind", "rslave", "rw"], "rslave"),
        ([pb.PROPAGATION_BIDIRECTIONAL], ["rbind", "rshared", "rw"], "rshared"),
        (
            [pb.PROPAGATION_BIDIRECTIONAL, pb.PROPAGATION_HOST_TO_CONTAINER],
            ["rbind", "rshared", "rw"],
            "rshared",
        ),
    ],
)
def test_mount_propagation(
    rootfs: Path, props: list[int], options: list[str], rootfs_prop: str | None
) -> None:
    mounts = [
        pb.Mount(container_path=f"/m{i}", host_path=f"/h{i}", propagation=p)
        for i, p in enumerate(props)
    ]
    spec = build(rootfs, container(mounts=mounts))
    assert mount_at(spec, "/m0")["options"] == options
    assert spec["linux"].get("rootfsPropagation") == rootfs_prop


MOUNTINFO = (
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "40 27 254:0 /a /srv rw,relatime shared:5 - ext4 /dev/vda rw\n"
    "41 40 0:50 / /srv/slave rw master:7 - tmpfs tmpfs rw\n"
    "42 40 0:51 / /srv/sp\\040ace rw shared:9 master:3 - tmpfs tmpfs rw\n"
    "43 40 0:52 / /srv/stacked rw shared:10 - tmpfs tmpfs rw\n"
    "44 40 0:53 / /srv/stacked rw - tmpfs tmpfs rw\n"
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "private"),
        ("/srv", "shared"),
        ("/srv/x/y", "shared"),
        ("/srv/slave/z", "slave"),
        ("/srv/slavery", "shared"),  # a longer name, not below /srv/slave
        ("/srv/sp ace", "shared"),
        ("/srv/stacked", "private"),  # the later of two stacked mounts is on top
    ],
)
def test_host_mount_propagation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, expected: str
) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    monkeypatch.setattr(specmod.os.path, "realpath", lambda p, strict=False: p)
    assert specmod.host_mount_propagation(path, str(table)) == expected


def test_host_mount_propagation_of_a_missing_path(tmp_path: Path) -> None:
    assert specmod.host_mount_propagation(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("prop", "have", "ok"),
    [
        (pb.PROPAGATION_BIDIRECTIONAL, "shared", True),
        (pb.PROPAGATION_BIDIRECTIONAL, "slave", False),
        (pb.PROPAGATION_BIDIRECTIONAL, "private", False),
        (pb.PROPAGATION_BIDIRECTIONAL, None, True),  # unknown: runc reports what is wrong
        (pb.PROPAGATION_HOST_TO_CONTAINER, "shared", True),
        (pb.PROPAGATION_HOST_TO_CONTAINER, "slave", True),
        (pb.PROPAGATION_HOST_TO_CONTAINER, "private", False),
        (pb.PROPAGATION_PRIVATE, "private", True),
    ],
)
def test_propagating_mounts_need_a_propagating_host_mount(
    rootfs: Path, prop: pb.MountPropagation.ValueType, have: str | None, ok: bool
) -> None:
    asked: list[str] = []

    def lookup(path: str) -> str | None:
        asked.append(path)
        return have

    m = pb.Mount(container_path="/m", host_path="/h", propagation=prop)
    if ok:
        build(rootfs, container(mounts=[m]), mount_propagation=lookup)
    else:
        with pytest.raises(errors.InvalidArgument, match=f"mount /m: .* mount is {have}"):
            build(rootfs, container(mounts=[m]), mount_propagation=lookup)
    assert asked == ([] if prop == pb.PROPAGATION_PRIVATE else ["/h"])


def test_readonly_and_recursive_readonly(rootfs: Path) -> None:
    ro = pb.Mount(container_path="/ro", host_path="/h", readonly=True, selinux_relabel=True)
    rro = pb.Mount(container_path="/rro", host_path="/h", readonly=True, recursive_read_only=True)
    spec = build(rootfs, container(mounts=[ro, rro]), rro_supported=True)
    assert mount_at(spec, "/ro")["options"] == ["rbind", "rprivate", "ro"]
    assert mount_at(spec, "/rro")["options"] == ["rbind", "rprivate", "rro"]
    with pytest.raises(errors.InvalidArgument, match="mount /rro: recursive read-only"):
        build(rootfs, container(mounts=[rro]), rro_supported=False)
    rro.readonly = False
    with pytest.raises(errors.InvalidArgument, match="needs readonly"):
        build(rootfs, container(mounts=[rro]), rro_supported=True)


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        (pb.Mount(container_path="/data/../etc", host_path="/h"), "'..'"),
        (pb.Mount(container_path="/data/..", host_path="/h"), "'..'"),
        (pb.Mount(container_path="data", host_path="/h"), "not an absolute path"),
        (pb.Mount(container_path="", host_path="/h"), "not an absolute path"),
        (pb.Mount(container_path="/data", host_path="rel"), "host_path"),
        (pb.Mount(container_path="/data", host_path="/h", propagation=7), "propagation"),
        (
            pb.Mount(container_path="/d", host_path="/h", uidMappings=[pb.IDMapping(length=1)]),
            "ID-mapped",
        ),
    ],
)
def test_bad_mounts_are_invalid(rootfs: Path, mount: pb.Mount, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, container(mounts=[mount]))


VIEW = "/run/crispy/containers/c0ffee/image-mounts/0"


def image_mount(**kw: Any) -> pb.Mount:
    kw.setdefault("container_path", "/vol")
    kw.setdefault("readonly", True)
    kw.setdefault("image", pb.ImageSpec(image="sha256:" + "ab" * 32))
    return pb.Mount(**kw)


def test_image_mount_binds_the_image_view_read_only(rootfs: Path) -> None:
    mounts = [
        image_mount(),
        image_mount(container_path="/rro", recursive_read_only=True),
        image_mount(container_path="/h2c", propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
    ]
    views = {"/vol": VIEW, "/rro": VIEW + "/sub", "/h2c": VIEW}
    asked: list[str] = []

    def lookup(path: str) -> str | None:
        asked.append(path)
        return "private"

    spec = build(
        rootfs,
        container(mounts=mounts),
        image_mounts=views,
        rro_supported=True,
        mount_propagation=lookup,
    )
    assert mount_at(spec, "/vol") == {
        "destination": "/vol",
        "type": "bind",
        "source": VIEW,
        "options": ["rbind", "rprivate", "ro"],
    }
    assert mount_at(spec, "/rro")["options"] == ["rbind", "rprivate", "rro"]
    assert mount_at(spec, "/rro")["source"] == VIEW + "/sub"
    # nothing on the host mounts inside an image's view: no propagation to set up or check
    assert mount_at(spec, "/h2c")["options"] == ["rbind", "rprivate", "ro"]
    assert "rootfsPropagation" not in spec["linux"] and asked == []


def test_image_mount_covers_an_image_volume(rootfs: Path) -> None:
    spec = build(
        rootfs,
        container(mounts=[image_mount(container_path="/data/")]),
        img=image(Volumes={"/data": {}}),
        image_mounts={"/data": VIEW},
    )
    assert mount_at(spec, "/data")["source"] == VIEW


@pytest.mark.parametrize(
    ("sub_path", "clean"),
    [("", ""), ("a", "a"), ("./a//b/", "a/b"), ("a/./b", "a/b"), (".", "")],
)
def test_image_mount_fields(sub_path: str, clean: str) -> None:
    m = image_mount(container_path="//vol/./x", image_sub_path=sub_path)
    assert specmod.image_mount(m) == ("/vol/x", clean)
    assert specmod.image_mount(pb.Mount(container_path="/h", host_path="/h")) is None


@pytest.mark.parametrize(
    ("mount", "match"),
    [
        (image_mount(readonly=False), "mount /vol: readonly must be true"),
        (image_mount(host_path="/srv"), "mount /vol: host_path must be empty"),
        (image_mount(image=pb.ImageSpec()), r"mount /vol: image\.image is empty"),
        (image_mount(image_sub_path="../x"), "image_sub_path '../x' contains a '..'"),
        (image_mount(image_sub_path="a/.."), "image_sub_path 'a/..' contains a '..'"),
        (image_mount(image_sub_path="/a"), "image_sub_path '/a' is not a relative path"),
        (image_mount(image_sub_path="a\x00b"), "image_sub_path .* contains a NUL"),
        (
            image_mount(propagation=pb.PROPAGATION_BIDIRECTIONAL),
            "PROPAGATION_BIDIRECTIONAL is not possible for an image mount",
        ),
        (image_mount(propagation=9), "unknown propagation"),
        (image_mount(recursive_read_only=True), "recursive read-only mounts are not supported"),
        (
            pb.Mount(container_path="/h", host_path="/h", image_sub_path="a"),
            "image_sub_path is only for image mounts",
        ),
        (image_mount(container_path="vol"), "not an absolute path"),
    ],
)
def test_bad_image_mounts_are_invalid(rootfs: Path, mount: pb.Mount, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, container(mounts=[mount]), image_mounts={"/vol": VIEW})


def test_an_image_mount_the_caller_did_not_make_is_an_error(rootfs: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match=r"mount /vol: image .* is not mounted"):
        build(rootfs, container(mounts=[image_mount()]))


def test_mounts_sorted_shallow_first(rootfs: Path) -> None:
    mounts = [
        pb.Mount(container_path="/a/b/c", host_path="/h1"),
        pb.Mount(container_path="/a", host_path="/h2"),
        pb.Mount(container_path="//a/./b", host_path="/h3"),
    ]
    spec = build(rootfs, container(mounts=mounts), hosts="", resolv_conf="", hostname_file="")
    dests = [m["destination"] for m in spec["mounts"][6:]]
    assert dests == ["/a", "/a/b", "/dev/shm", "/a/b/c"]


def test_image_volumes(rootfs: Path) -> None:
    img = image(Volumes={"/data": {}, "/var/lib/db/": {}, "/cache": {}})
    cfg = container(mounts=[pb.Mount(container_path="/cache", host_path="/h")])
    spec = build(rootfs, cfg, img=img)
    vdir = "/run/crispy/containers/c0ffee/volumes"
    data = mount_at(spec, "/data")
    assert data["source"] == f"{vdir}/{specmod.volume_name('/data')}"
    assert data["options"] == ["rbind", "rprivate", "rw"]
    assert mount_at(spec, "/var/lib/db")["source"].startswith(f"{vdir}/var-lib-db-")
    assert mount_at(spec, "/cache")["source"] == "/h"
    assert image_volumes(img, cfg, vdir) == [
        data["source"],
        mount_at(spec, "/var/lib/db")["source"],
    ]
    assert image_volumes(img, cfg) == [
        os.path.basename(data["source"]),
        specmod.volume_name("/var/lib/db"),
    ]
    assert specmod.volume_name("/a-b") != specmod.volume_name("/a/b")
    nothing = build(rootfs, cfg, img=img, volume_dir="")
    assert "/data" not in [m["destination"] for m in nothing["mounts"]]
    with pytest.raises(errors.InvalidArgument, match="image config Volumes"):
        build(rootfs, img=image(Volumes={"/data/../../etc": {}}))


# -- devices -----------------------------------------------------------------------------


def test_devices_and_default_cgroup_rules(rootfs: Path) -> None:
    devs = [
        pb.Device(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rw"),
        pb.Device(container_path="/dev/xvda", host_path="/dev/sda", permissions="r"),
        pb.Device(container_path="/dev/net2", host_path="/dev/net", permissions="rwm"),
    ]
    spec = build(rootfs, container(devices=devs))
    assert [(d["path"], d["type"], d["major"], d["minor"]) for d in spec["linux"]["devices"]] == [
        ("/dev/fuse", "c", 10, 229),
        ("/dev/xvda", "b", 8, 0),
        ("/dev/net2/tun", "c", 10, 200),
    ]
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in rules
    assert rules[-3:] == [
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"},
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
    ]


@pytest.mark.parametrize(
    ("dev", "match"),
    [
        (pb.Device(container_path="/dev/x", host_path="/dev/fuse", permissions="rwx"), "rwm"),
        (pb.Device(container_path="/dev/x", host_path="/dev/missing"), "No such file"),
        (pb.Device(container_path="/dev/x", host_path="/etc/passwd"), "not a device"),
        (pb.Device(container_path="/dev/../x", host_path="/dev/fuse"), "'..'"),
    ],
)
def test_bad_devices_are_invalid(rootfs: Path, dev: pb.Device, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, container(devices=[dev]))


# -- namespaces --------------------------------------------------------------------------


def ns_of(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(n["type"], n.get("path", "")) for n in spec["linux"]["namespaces"]]


def test_namespaces_joined_from_the_pod(rootfs: Path) -> None:
    opts = pb.NamespaceOption(pid=pb.CONTAINER)
    spec = build(rootfs, container(linux=security(namespace_options=opts)))
    assert ns_of(spec) == [
        ("pid", ""),
        ("network", "/run/crispy/ns/p0d/net"),
        ("ipc", "/run/crispy/ns/p0d/ipc"),
        ("uts", "/run/crispy/ns/p0d/uts"),
        ("mount", ""),
    ]
    assert spec["hostname"] == "web-0"


def test_shared_and_host_pid(rootfs: Path) -> None:
    pod_pid = container(linux=security(namespace_options=pb.NamespaceOption(pid=pb.POD)))
    spec = build(rootfs, pod_pid, pid_ns="/proc/42/ns/pid")
    assert ns_of(spec)[0] == ("pid", "/proc/42/ns/pid")
    host_pid = container(linux=security(namespace_options=pb.NamespaceOption(pid=pb.NODE)))
    assert "pid" not in [t for t, _ in ns_of(build(rootfs, host_pid))]
    target = container(
        linux=security(namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id="abc"))
    )
    with pytest.raises(errors.InvalidArgument, match="TARGET"):
        build(rootfs, target)


def test_host_namespaces_and_cgroupns(rootfs: Path) -> None:
    spec = build(rootfs, netns="", ipcns="", utsns="", hostname="", cgroupns=True)
    assert ns_of(spec) == [("pid", ""), ("mount", ""), ("cgroup", "")]
    assert "hostname" not in spec


def test_user_namespaces_are_refused(rootfs: Path) -> None:
    opts = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.POD))
    with pytest.raises(errors.InvalidArgument, match="user namespaces"):
        build(rootfs, container(linux=security(namespace_options=opts)))


# -- capabilities ------------------------------------------------------------------------


def caps_of(spec: dict[str, Any]) -> list[str]:
    c = spec["process"]["capabilities"]
    assert c["bounding"] == c["effective"] == c["permitted"]
    return list(c["bounding"])


def with_caps(**kw: Any) -> pb.ContainerConfig:
    return container(linux=security(capabilities=pb.Capability(**kw)))


def test_default_caps(rootfs: Path) -> None:
    spec = build(rootfs)
    assert caps_of(spec) == ALL_DEFAULT_CAPS
    assert "ambient" not in spec["process"]["capabilities"]
    assert "inheritable" not in spec["process"]["capabilities"]


def test_caps_add_drop_with_or_without_prefix(rootfs: Path) -> None:
    spec = build(
        rootfs,
        with_caps(
            add_capabilities=["NET_ADMIN", "cap_sys_time"],
            drop_capabilities=["chown", "CAP_KILL", "CAP_NOT_A_CAP"],
        ),
    )
    want = [c for c in ALL_DEFAULT_CAPS if c not in ("CAP_CHOWN", "CAP_KILL")]
    assert caps_of(spec) == [*want, "CAP_NET_ADMIN", "CAP_SYS_TIME"]


def test_caps_all(rootfs: Path) -> None:
    spec = build(
        rootfs, with_caps(drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"])
    )
    assert caps_of(spec) == ["CAP_NET_BIND_SERVICE"]
    spec = build(rootfs, with_caps(add_capabilities=["all"], drop_capabilities=["CHOWN"]))
    assert caps_of(spec) == list(specmod.CAP_NAMES[1:])
    spec = build(rootfs, with_caps(add_capabilities=["ALL"]), all_caps=specmod.CAP_NAMES[:38])
    assert caps_of(spec) == list(specmod.CAP_NAMES[:38])


def test_caps_limited_to_what_the_host_holds(rootfs: Path) -> None:
    held = tuple(c for c in specmod.CAP_NAMES if c not in ("CAP_SYS_RESOURCE", "CAP_MKNOD"))
    spec = build(rootfs, all_caps=held)
    assert caps_of(spec) == [c for c in ALL_DEFAULT_CAPS if c != "CAP_MKNOD"]
    with pytest.raises(errors.InvalidArgument, match="CAP_SYS_RESOURCE is not available"):
        build(rootfs, with_caps(add_capabilities=["SYS_RESOURCE"]), all_caps=held)
    cfg = container(linux=security(privileged=True))
    spec = build(rootfs, cfg, pod=sandbox(privileged=True), all_caps=held)
    assert caps_of(spec) == list(held)
    assert set(specmod.host_capabilities()) <= set(specmod.CAP_NAMES)


def test_caps_ambient_and_unknown(rootfs: Path) -> None:
    spec = build(
        rootfs, with_caps(drop_capabilities=["ALL"], add_ambient_capabilities=["NET_BIND_SERVICE"])
    )
    c = spec["process"]["capabilities"]
    assert c["ambient"] == c["inheritable"] == c["bounding"] == ["CAP_NET_BIND_SERVICE"]
    with pytest.raises(errors.InvalidArgument, match="unknown capability 'FLY'"):
        build(rootfs, with_caps(add_capabilities=["FLY"]))


# -- security flags, masked paths --------------------------------------------------------


def test_masked_and_readonly_paths(rootfs: Path) -> None:
    spec = build(rootfs)
    assert spec["linux"]["maskedPaths"] == list(specmod.MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(specmod.READONLY_PATHS)
    cfg = container(linux=security(masked_paths=["/proc/x"], readonly_paths=["/proc/y"]))
    spec = build(rootfs, cfg)
    assert spec["linux"]["maskedPaths"] == ["/proc/x"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/y"]
    with pytest.raises(errors.InvalidArgument, match="masked_paths"):
        build(rootfs, container(linux=security(masked_paths=["proc"])))


def test_no_new_privs(rootfs: Path) -> None:
    assert build(rootfs)["process"]["noNewPrivileges"] is False
    cfg = container(linux=security(no_new_privs=True))
    assert build(rootfs, cfg)["process"]["noNewPrivileges"] is True


# -- privileged --------------------------------------------------------------------------


def test_privileged(rootfs: Path) -> None:
    sc = dict(
        privileged=True,
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
        apparmor=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
        masked_paths=["/proc/kcore"],
        capabilities=pb.Capability(drop_capabilities=["ALL"]),
    )
    spec = build(
        rootfs,
        container(linux=security(**sc)),
        pod=sandbox(privileged=True),
        apparmor_available=True,
    )
    assert caps_of(spec) == list(specmod.CAP_NAMES)
    assert "seccomp" not in spec["linux"]
    assert "apparmorProfile" not in spec["process"]
    assert "maskedPaths" not in spec["linux"] and "readonlyPaths" not in spec["linux"]
    assert mount_at(spec, "/sys")["options"][-1] == "rw"
    assert mount_at(spec, "/sys/fs/cgroup")["options"][-1] == "rw"
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert [d["path"] for d in spec["linux"]["devices"]] == sorted(FAKE_DEVICES)


def test_privileged_needs_a_privileged_pod(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="privileged"):
        build(rootfs, container(linux=security(privileged=True)))


# -- seccomp -----------------------------------------------------------------------------


def seccomp_cfg(**kw: Any) -> pb.ContainerConfig:
    return container(linux=security(seccomp=pb.SecurityProfile(**kw)))


def allowed(profile: dict[str, Any]) -> set[str]:
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


def test_seccomp_runtime_default(rootfs: Path) -> None:
    spec = build(rootfs, seccomp_cfg(profile_type=pb.SecurityProfile.RuntimeDefault))
    prof = spec["linux"]["seccomp"]
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["defaultErrnoRet"] == 1
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    ok = allowed(prof)
    assert {"read", "write", "execve", "arch_prctl", "ptrace", "chroot"} <= ok
    assert not {"mount", "unshare", "setns", "bpf", "kexec_load", "reboot", "set_tls"} & ok
    clone = [r for r in prof["syscalls"] if r["names"] == ["clone"]]
    assert clone == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    clone3 = [r for r in prof["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    assert all(set(r) <= {"names", "action", "args", "errnoRet"} for r in prof["syscalls"])


def test_seccomp_default_follows_caps_arch_and_kernel(rootfs: Path) -> None:
    cfg = seccomp_cfg(profile_type=pb.SecurityProfile.RuntimeDefault)
    cfg.linux.security_context.capabilities.add_capabilities.extend(["SYS_ADMIN"])
    cfg.linux.security_context.capabilities.drop_capabilities.extend(["SYS_CHROOT"])
    prof = build(rootfs, cfg, machine="aarch64", kernel=(4, 4))["linux"]["seccomp"]
    assert prof["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    ok = allowed(prof)
    assert {"mount", "unshare", "clone", "clone3", "set_tls"} <= ok
    assert not {"chroot", "arch_prctl", "ptrace"} & ok
    assert not [r for r in prof["syscalls"] if r["action"] != "SCMP_ACT_ALLOW"]


def test_seccomp_localhost(rootfs: Path, tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_LOG",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "comment": "x"}],
            }
        )
    )
    spec = build(
        rootfs, seccomp_cfg(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path))
    )
    assert spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_LOG",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}],
    }
    legacy = container(linux=security(seccomp_profile_path=f"localhost/{path}"))
    assert build(rootfs, legacy)["linux"]["seccomp"] == spec["linux"]["seccomp"]


@pytest.mark.parametrize("content", [None, "{not json", '{"syscalls": []}', "[]"])
def test_seccomp_localhost_bad_file_names_it(
    rootfs: Path, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    cfg = seccomp_cfg(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path))
    with pytest.raises(errors.InvalidArgument, match=re.escape(str(path))):
        build(rootfs, cfg)


def test_seccomp_unconfined_unset_and_legacy(rootfs: Path) -> None:
    assert "seccomp" not in build(rootfs)["linux"]
    assert (
        "seccomp"
        not in build(rootfs, seccomp_cfg(profile_type=pb.SecurityProfile.Unconfined))["linux"]
    )
    for legacy in ("runtime/default", "docker/default"):
        spec = build(rootfs, container(linux=security(seccomp_profile_path=legacy)))
        assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    spec = build(rootfs, container(linux=security(seccomp_profile_path="unconfined")))
    assert "seccomp" not in spec["linux"]
    with pytest.raises(errors.InvalidArgument, match="seccomp_profile_path"):
        build(rootfs, container(linux=security(seccomp_profile_path="bogus")))
    with pytest.raises(errors.InvalidArgument, match="localhost_ref"):
        build(
            rootfs, seccomp_cfg(profile_type=pb.SecurityProfile.RuntimeDefault, localhost_ref="/x")
        )
    with pytest.raises(errors.InvalidArgument, match="seccomp is not supported"):
        build(
            rootfs,
            seccomp_cfg(profile_type=pb.SecurityProfile.RuntimeDefault),
            seccomp_available=False,
        )


def test_default_profile_data_is_well_formed() -> None:
    for machine in ("x86_64", "aarch64"):
        prof = seccomp.default_profile(machine, specmod.CAP_NAMES, (6, 1))
        names = [n for r in prof["syscalls"] for n in r["names"]]
        assert all(isinstance(n, str) and n for n in names)
    assert seccomp.parse_version("5.15.0-91-generic") == (5, 15)
    assert seccomp.parse_version("6.1") == (6, 1)


# -- apparmor ----------------------------------------------------------------------------


def apparmor_cfg(**kw: Any) -> pb.ContainerConfig:
    return container(linux=security(apparmor=pb.SecurityProfile(**kw)))


def test_apparmor(rootfs: Path) -> None:
    local = apparmor_cfg(profile_type=pb.SecurityProfile.Localhost, localhost_ref="my-prof")
    default = apparmor_cfg(profile_type=pb.SecurityProfile.RuntimeDefault)
    unconfined = apparmor_cfg(profile_type=pb.SecurityProfile.Unconfined)
    # not available: RuntimeDefault quietly nothing, Localhost an error
    assert "apparmorProfile" not in build(rootfs, default)["process"]
    with pytest.raises(errors.InvalidArgument, match="AppArmor is not available on this host"):
        build(rootfs, local)
    on = {"apparmor_available": True}
    assert build(rootfs, local, **on)["process"]["apparmorProfile"] == "my-prof"
    assert build(rootfs, default, **on)["process"]["apparmorProfile"] == "crispy-default"
    assert build(rootfs, **on)["process"]["apparmorProfile"] == "crispy-default"  # unset
    assert "apparmorProfile" not in build(rootfs, unconfined, **on)["process"]
    legacy = container(linux=security(apparmor_profile="localhost/other"))
    assert build(rootfs, legacy, **on)["process"]["apparmorProfile"] == "other"


# -- resources, oom, rlimits -------------------------------------------------------------


def resources_cfg(**kw: Any) -> pb.ContainerConfig:
    return container(linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**kw)))


def test_resources(rootfs: Path) -> None:
    cfg = resources_cfg(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1,3",
        cpuset_mems="0",
        memory_limit_in_bytes=256 << 20,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21)],
        unified={"memory.high": "200000000", "cpu.weight": "50"},
    )
    spec = build(rootfs, cfg)
    res = spec["linux"]["resources"]
    assert res["cpu"] == {
        "shares": 512,
        "quota": 50000,
        "period": 100000,
        "cpus": "0-1,3",
        "mems": "0",
    }
    assert res["memory"] == {"limit": 256 << 20, "swap": 256 << 20}  # no swap by default
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    assert res["unified"] == {"cpu.weight": "50", "memory.high": "200000000"}
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod123/c0ffee"
    swap = resources_cfg(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    assert build(rootfs, swap)["linux"]["resources"]["memory"] == {"limit": 100, "swap": 300}
    assert build(rootfs, swap, swap_available=False)["linux"]["resources"]["memory"] == {
        "limit": 100
    }
    assert "memory" not in build(rootfs)["linux"]["resources"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(memory_limit_in_bytes=300, memory_swap_limit_in_bytes=100), "below"),
        (dict(cpu_shares=-2), "cpu_shares"),
        (dict(cpuset_cpus="0-1;rm"), "cpuset_cpus"),
        (dict(unified={"../../x": "1"}), "unified"),
        (dict(hugepage_limits=[pb.HugepageLimit(page_size="2M/../x", limit=1)]), "page_size"),
        (dict(oom_score_adj=1001), "oom_score_adj"),
    ],
)
def test_bad_resources(rootfs: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        build(rootfs, resources_cfg(**kw))


def test_oom_score_adj_clamped_and_rlimits(rootfs: Path) -> None:
    assert build(rootfs, resources_cfg(oom_score_adj=-997))["process"]["oomScoreAdj"] == 0
    spec = build(rootfs, resources_cfg(oom_score_adj=-997), min_oom_score_adj=-999)
    assert spec["process"]["oomScoreAdj"] == -997
    assert build(rootfs, resources_cfg(oom_score_adj=1000))["process"]["oomScoreAdj"] == 1000
    spec = build(rootfs, rlimits={"RLIMIT_NOFILE": (1024, 4096)})
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]


# -- annotations, tty, sysctls -----------------------------------------------------------


def test_only_crispys_annotations(rootfs: Path) -> None:
    pod = sandbox(
        annotations={"pod.secret/anno": "pod-anno-value-xyz"}, labels={"l": "pod-label-xyz"}
    )
    pod.linux.sysctls["net.ipv4.ip_forward"] = "1"
    cfg = container(
        annotations={"ctr.secret/anno": "ctr-anno-value-xyz"},
        labels={"l": "ctr-label-xyz"},
        image=pb.ImageSpec(image="sha256:abc", user_specified_image="app:1"),
    )
    spec = build(rootfs, cfg, pod=pod)
    assert spec["annotations"] == {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "p0d",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "app:1",
    }
    text = json.dumps(spec)
    for leak in ("xyz", "secret", "ip_forward"):
        assert leak not in text
    assert "sysctl" not in spec["linux"]


def test_no_join_annotations_without_a_sandbox_container(rootfs: Path) -> None:
    # runsc would read them as "join the pod's sandbox", which such a pod does not have
    spec = build(rootfs, sandbox_container=False)
    assert "io.kubernetes.cri.container-type" not in spec["annotations"]
    assert "io.kubernetes.cri.sandbox-id" not in spec["annotations"]
    assert spec["annotations"]["io.kubernetes.cri.container-name"] == "app"


def test_tty(rootfs: Path) -> None:
    assert build(rootfs)["process"]["terminal"] is False
    assert build(rootfs, container(tty=True, stdin=True))["process"]["terminal"] is True


# -- exec --------------------------------------------------------------------------------


def test_exec_process_keeps_identity(rootfs: Path) -> None:
    cfg = container(
        linux=security(
            run_as_username="app",
            no_new_privs=True,
            capabilities=pb.Capability(drop_capabilities=["ALL"], add_capabilities=["KILL"]),
            apparmor=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
        ),
        working_dir="/work",
    )
    spec = build(rootfs, cfg, apparmor_available=True, rlimits={"RLIMIT_NOFILE": (10, 20)})
    proc = exec_process(spec, ["ls", "-l"], tty=True)
    assert proc["args"] == ["ls", "-l"]
    assert proc["terminal"] is True
    for key in (
        "user",
        "env",
        "cwd",
        "capabilities",
        "noNewPrivileges",
        "apparmorProfile",
        "rlimits",
        "oomScoreAdj",
    ):
        assert proc[key] == spec["process"][key], key
    assert proc["user"]["uid"] == 1000 and proc["capabilities"]["bounding"] == ["CAP_KILL"]
    proc["user"]["uid"] = 0  # a copy: the spec is left alone
    assert spec["process"]["user"]["uid"] == 1000
    with pytest.raises(errors.InvalidArgument):
        exec_process(spec, [])
    with pytest.raises(errors.InvalidArgument, match="NUL"):
        exec_process(spec, ["a\x00b"])


# -- golden files ------------------------------------------------------------------------


def test_golden_minimal(rootfs: Path) -> None:
    img = {"config": {"Cmd": ["/pause"]}}
    check_golden("minimal", build(rootfs, img=img), rootfs)


def test_golden_full(rootfs: Path) -> None:
    cfg = container(
        metadata=pb.ContainerMetadata(name="db", attempt=2),
        image=pb.ImageSpec(image="sha256:1234", user_specified_image="registry.example/db:15"),
        command=["/usr/bin/postgres"],
        args=["-D", "/var/lib/postgresql/data"],
        working_dir="/var/lib/postgresql",
        envs=[pb.KeyValue(key="PGDATA", value="/var/lib/postgresql/data")],
        mounts=[
            pb.Mount(
                container_path="/var/lib/postgresql/data",
                host_path="/srv/pg",
                propagation=pb.PROPAGATION_PRIVATE,
            ),
            pb.Mount(
                container_path="/etc/config",
                host_path="/srv/cfg",
                readonly=True,
                propagation=pb.PROPAGATION_HOST_TO_CONTAINER,
            ),
            pb.Mount(
                container_path="/mnt/shared",
                host_path="/srv/shared",
                propagation=pb.PROPAGATION_BIDIRECTIONAL,
            ),
        ],
        devices=[pb.Device(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rwm")],
        tty=True,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(
                cpu_shares=256,
                cpu_quota=20000,
                cpu_period=100000,
                cpuset_cpus="0-3",
                memory_limit_in_bytes=512 << 20,
                oom_score_adj=-997,
                hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=0)],
            ),
            security_context=pb.LinuxContainerSecurityContext(
                run_as_user=pb.Int64Value(value=1000),
                run_as_group=pb.Int64Value(value=1000),
                supplemental_groups=[2000],
                capabilities=pb.Capability(
                    add_capabilities=["NET_ADMIN"], drop_capabilities=["MKNOD", "NET_RAW"]
                ),
                no_new_privs=True,
                readonly_rootfs=True,
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
                namespace_options=pb.NamespaceOption(pid=pb.CONTAINER),
            ),
        ),
    )
    img = image(Volumes={"/var/lib/postgresql/data": {}, "/backup": {}}, User="app")
    spec = build(
        rootfs, cfg, img=img, min_oom_score_adj=-999, rlimits={"RLIMIT_NOFILE": (65536, 65536)}
    )
    check_golden("full", spec, rootfs)


def test_golden_privileged(rootfs: Path) -> None:
    cfg = container(
        command=["/bin/sh"],
        linux=security(privileged=True, capabilities=pb.Capability(drop_capabilities=["ALL"])),
    )
    spec = build(rootfs, cfg, pod=sandbox(privileged=True))
    check_golden("privileged", spec, rootfs)


def test_golden_host_network_host_pid(rootfs: Path) -> None:
    cfg = container(
        command=["/agent"],
        linux=security(
            namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.NODE, ipc=pb.NODE),
            run_as_username="daemon",
        ),
    )
    pod = sandbox(hostname="node-1")
    spec = build(rootfs, cfg, pod=pod, netns="", ipcns="", utsns="", hostname="", shm="/dev/shm")
    check_golden("host_network_host_pid", spec, rootfs)
