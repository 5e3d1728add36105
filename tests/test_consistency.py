"""The consistency checker that crash tests rely on: quiet on a healthy daemon, and it
names what it finds on a host where something leaked or rotted."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.consistency import problems, shims
from support.containers import container_config, run, wait_state
from support.daemon import Crispyd
from support.pods import TestNetwork, pod_config, run_pod
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root


def test_a_healthy_daemon_has_no_problems_and_a_leak_is_named(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd, pod_net: TestNetwork
) -> None:
    parent = f"/crispy-consistency-{uuid.uuid4().hex[:8]}"
    # an infra container, a shim, a rootfs mount, a cgroup of its own
    cfg = pod_config(pid=pb.POD, cgroup_parent=f"{parent}/pod")
    pod_id = run_pod(pods, cfg)
    cid = run(pods, pod_id, cfg, container_config(pod_images.busybox.reference, command=["top"]))
    wait_state(pods, cid, pb.CONTAINER_RUNNING)
    assert problems(pod_crispyd, pods, pod_net) == []
    assert (
        str(pod_crispyd.state / "pods" / pod_id / "shim.log") in shims(pod_crispyd.state).values()
    )

    orphan = pod_crispyd.state / "pods" / ("e" * 64)
    orphan.mkdir()
    try:
        assert problems(pod_crispyd, pods, pod_net, parent) == [
            f"pods/{'e' * 64}: no listed pod owns it"
        ]
    finally:
        orphan.rmdir()


def test_a_blob_whose_bytes_changed_is_named(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd
) -> None:
    blobs = pod_crispyd.root / "content" / "blobs" / "sha256"
    config = pod_images.busybox.config_digest.removeprefix("sha256:")
    path = blobs / config
    good = path.read_bytes()
    try:
        path.write_bytes(good + b" ")
        found = problems(pod_crispyd, pods)
        assert len(found) == 1 and found[0].startswith(f"blob sha256:{config}:"), found
    finally:
        path.write_bytes(good)
    assert problems(pod_crispyd, pods) == []


def test_snapshot_dirs_and_rows_must_match(pods: CriClient, pod_crispyd: Crispyd) -> None:
    stray = pod_crispyd.root / "snapshots" / "999999"
    stray.mkdir()
    try:
        assert problems(pod_crispyd, pods) == ["snapshot dir 999999: no snapshot row"]
    finally:
        os.rmdir(stray)


def test_mount_helpers_see_only_this_daemon(tmp_path: Path) -> None:
    assert shims(tmp_path) == {}


def test_a_veth_on_the_bridge_that_no_pod_holds_is_named(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd, pod_net: TestNetwork
) -> None:
    pod_id = run_pod(pods, pod_config())  # the bridge exists, with this pod's veth on it
    assert problems(pod_crispyd, pods, pod_net) == []
    name = f"cveth{uuid.uuid4().hex[:6]}"
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True
    )
    try:
        subprocess.run(["ip", "link", "set", name, "master", pod_net.bridge], check=True)
        found = problems(pod_crispyd, pods, pod_net)
        assert found == [f"veth {name}: on the test bridge, but in no listed pod"]
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
    pods.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    pods.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def test_garbage_blobs_are_named(pods: CriClient, pod_crispyd: Crispyd) -> None:
    data = uuid.uuid4().bytes
    digest = hashlib.sha256(data).hexdigest()
    path = pod_crispyd.root / "content" / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        assert problems(pod_crispyd, pods) == [f"blob sha256:{digest}: no image holds it"]
    finally:
        path.unlink()
