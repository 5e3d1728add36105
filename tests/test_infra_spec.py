"""The OCI spec of a pod's infra ("pause") container (oci/spec.py:build_sandbox_spec) and
the cgroup it runs in: no root, no daemon.

Two golden config.json files (tests/golden/sandbox/) pin the whole spec for a fixed pod,
so any change to the infra container shows up as a diff. After a deliberate change,
rewrite them and review the diff:

    CRISPY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_infra_spec.py -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crispy import errors
from crispy.api import pb
from crispy.oci import spec as specmod
from crispy.oci.spec import build_sandbox_spec, build_spec, sandbox_context
from crispy.system import cgroups
from support.spec_context import make_ctx

GOLDEN = Path(__file__).parent / "golden" / "sandbox"

# What the pause image's config says (registry.k8s.io/pause: FROM scratch, only /pause).
PAUSE_IMAGE: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": ["/pause"],
        "User": "65535:65535",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    },
}


def pause_image(**cfg: Any) -> dict[str, Any]:
    return {**PAUSE_IMAGE, "config": {**PAUSE_IMAGE["config"], **cfg}}


def pod_config(pid: int = pb.POD, network: int = pb.POD, ipc: int = pb.POD) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web-0", uid="u1", namespace="default"),
        hostname="web-0",
    )
    opts = cfg.linux.security_context.namespace_options
    opts.pid, opts.network, opts.ipc = pid, network, ipc
    return cfg


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def build(rootfs: Path, img: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    ns: dict[str, Any] = dict(
        netns="/run/crispy/ns/p0d/net",
        ipcns="/run/crispy/ns/p0d/ipc",
        utsns="/run/crispy/ns/p0d/uts",
        shm="/run/crispy/pods/p0d/shm",
        cgroups_path="/kubepods/pod123/p0d",
    )
    ns.update(kw)
    ctx = sandbox_context("p0d", str(rootfs), **ns)
    return build_sandbox_spec(pod_config(), img if img is not None else PAUSE_IMAGE, ctx)


def check_golden(name: str, spec: dict[str, Any], rootfs: Path) -> None:
    text = json.dumps(spec, indent=1) + "\n"
    text = text.replace(str(rootfs), "/ROOTFS")
    path = GOLDEN / f"{name}.json"
    if os.environ.get("CRISPY_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with CRISPY_UPDATE_GOLDEN=1"
    assert json.loads(text) == json.loads(path.read_text()), (
        f"{name}: the sandbox spec differs from {path} (CRISPY_UPDATE_GOLDEN=1 rewrites it)"
    )


def mount_at(spec: dict[str, Any], dest: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == dest]
    assert len(found) == 1, (dest, found)
    return found[0]


# -- golden files ------------------------------------------------------------------------


def test_golden_pod(rootfs: Path) -> None:
    check_golden("pod", build(rootfs), rootfs)


def test_golden_host_namespaces(rootfs: Path) -> None:
    spec = build(rootfs, netns="", ipcns="", utsns="", shm="/dev/shm")
    check_golden("host_namespaces", spec, rootfs)


# -- one builder: what the infra container shares with a container ---------------------


def test_shares_the_containers_version_mounts_and_paths(rootfs: Path) -> None:
    sandbox = build(rootfs)
    container = build_spec(
        pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app"), command=["/app"]),
        pod_config(),
        PAUSE_IMAGE,
        make_ctx(rootfs),
    )
    assert sandbox["ociVersion"] == container["ociVersion"] == specmod.OCI_VERSION
    theirs = {m["destination"]: m for m in container["mounts"]}
    for dest in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"):
        assert mount_at(sandbox, dest) == theirs[dest], dest
    assert mount_at(sandbox, "/dev/shm")["options"] == ["rbind", "rprivate", "rw"]
    assert sandbox["linux"]["maskedPaths"] == container["linux"]["maskedPaths"]
    assert sandbox["linux"]["readonlyPaths"] == container["linux"]["readonlyPaths"]


def test_no_cgroup_fs_no_device_no_capability_read_only(rootfs: Path) -> None:
    spec = build(rootfs)
    assert "/sys/fs/cgroup" not in {m["destination"] for m in spec["mounts"]}
    assert spec["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "devices" not in spec["linux"]
    caps = spec["process"]["capabilities"]
    assert caps == {"bounding": [], "effective": [], "permitted": []}
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"] == {"path": str(rootfs), "readonly": True}
    for key in ("seccomp", "sysctl"):
        assert key not in spec["linux"]
    for key in ("apparmorProfile", "oomScoreAdj", "rlimits"):
        assert key not in spec["process"]
    assert spec["annotations"] == {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "p0d",
    }


def test_joins_the_pods_namespaces_in_a_pid_namespace_of_its_own(rootfs: Path) -> None:
    spec = build(rootfs)
    assert sorted(spec["linux"]["namespaces"], key=lambda n: n["type"]) == [
        {"type": "ipc", "path": "/run/crispy/ns/p0d/ipc"},
        {"type": "mount"},
        {"type": "network", "path": "/run/crispy/ns/p0d/net"},
        {"type": "pid"},
        {"type": "uts", "path": "/run/crispy/ns/p0d/uts"},
    ]
    assert "hostname" not in spec  # the pod's UTS namespace already has it
    host = build(rootfs, netns="", ipcns="", utsns="", shm="/dev/shm")
    assert host["linux"]["namespaces"] == [{"type": "pid"}, {"type": "mount"}]
    assert "/dev/mqueue" not in {m["destination"] for m in host["mounts"]}
    assert mount_at(host, "/dev/shm")["source"] == "/dev/shm"


def test_process_is_the_images_entrypoint_and_env_in_the_root_dir(rootfs: Path) -> None:
    spec = build(rootfs, pause_image(Cmd=["-v"], WorkingDir="/srv"))
    assert spec["process"]["args"] == ["/pause", "-v"]
    assert spec["process"]["cwd"] == "/"
    assert spec["process"]["terminal"] is False
    assert spec["process"]["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ]
    spec = build(rootfs, pause_image(Env=["LANG=C"]))  # no HOSTNAME or HOME either
    assert spec["process"]["env"] == [f"PATH={specmod.DEFAULT_PATH}", "LANG=C"]


def test_image_without_a_command_is_refused(rootfs: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="the sandbox image: no command"):
        build(rootfs, pause_image(Entrypoint=None))


def test_user_is_the_images_resolved_in_its_rootfs(rootfs: Path) -> None:
    spec = build(rootfs)
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65535}
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("nobody:x:65534:65534::/:/sbin/nologin\n")
    (rootfs / "etc" / "group").write_text("nogroup:x:65534:\nstaff:x:50:nobody\n")
    spec = build(rootfs, pause_image(User="nobody"))
    assert spec["process"]["user"] == {"uid": 65534, "gid": 65534}  # no supplementary groups
    with pytest.raises(errors.InvalidArgument, match="no user 'ghost'"):
        build(rootfs, pause_image(User="ghost"))


# -- the cgroup formula ------------------------------------------------------------------


def test_container_cgroup_for_either_driver() -> None:
    cg = cgroups.container_cgroup("cgroupfs", "/kubepods/pod1", "/kubepods/pod1/", "c1")
    assert cg == ("/kubepods/pod1/c1", "/kubepods/pod1/c1")
    cg = cgroups.container_cgroup(
        "systemd", "kubepods-pod1.slice", "/kubepods.slice/kubepods-pod1.slice", "c1"
    )
    assert cg.runtime == "kubepods-pod1.slice:crispy:c1"
    assert cg.path == "/kubepods.slice/kubepods-pod1.slice/crispy-c1.scope"
