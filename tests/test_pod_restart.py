"""crispyd killed with SIGKILL around pods: live pods survive, half-made ones are undone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.oci.shim_client import ShimClient
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
    wait_shim,
)
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TestNetwork]:
    n = TestNetwork.random("r", 249, tmp_path / "ipam")
    yield n
    n.remove_bridge()


def _remove_all_and_stop(d: Crispyd) -> None:
    """Whatever a failed assertion left: pods, then the daemon."""
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(grpc.RpcError), d.client() as c:
            remove_all_pods(c)
    d.stop()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pods_survive_a_sigkilled_crispyd(
    tmp_path: Path, net: TestNetwork, test_images: TestImages
) -> None:
    d = Crispyd(
        tmp_path / "d", config=pod_daemon_config(tmp_path / "d", net, test_images.pause.reference)
    )
    (d.base / "net.d" / "10-test.conflist").write_text(net.conflist())
    d.start()
    try:
        with d.client(timeout=60) as c:
            plain = run_pod(c, pod_config(name="plain"))
            shared = run_pod(c, pod_config(name="shared", pid=pb.POD))
            for p in (plain, shared):
                wait_shim(c, p)
            before = {p: pod_status(c, p) for p in (plain, shared)}
        d.kill()
        for _, info in before.values():
            assert _alive(info["shimPid"])
        assert _alive(before[shared][1]["pid"])

        d.start()
        with d.client(timeout=60) as c:
            items = {p.id: p for p in c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items}
            assert set(items) == {plain, shared}
            for pod_id, (status, info) in before.items():
                assert items[pod_id].state == pb.SANDBOX_READY
                now, now_info = pod_status(c, pod_id)
                assert now.state == pb.SANDBOX_READY
                assert now.network.ip == status.network.ip != ""
                assert now_info["shimPid"] == info["shimPid"]
                health = asyncio.run(
                    ShimClient(str(d.state / "pods" / pod_id / "shim.sock")).health()
                )
                assert health["pid"] == info["shimPid"] and health["pod_id"] == pod_id
            assert pod_status(c, shared)[1]["pid"] == before[shared][1]["pid"]
            # the pod's network still works after the restart
            for pod_id in before:
                remove_pod(c, pod_id)
            assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        for _, info in before.values():
            deadline = time.monotonic() + 5
            while _alive(info["shimPid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(info["shimPid"])
        assert net.allocated() == set()
    finally:
        _remove_all_and_stop(d)


SLOW_PLUGIN = """#!/bin/sh
# A CNI plugin whose ADD hangs (so crispyd can be killed mid-RunPodSandbox).
if [ "$CNI_COMMAND" = ADD ]; then
    echo $$ > {marker}
    exec sleep 60
fi
if [ "$CNI_COMMAND" = DEL ]; then echo "$CNI_CONTAINERID" >> {dels}; fi
exit 0
"""


def test_crispyd_killed_mid_run_pod_sandbox_is_rolled_back(
    tmp_path: Path, net: TestNetwork, test_images: TestImages
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker, dels = tmp_path / "adding", tmp_path / "dels"
    plugin = bindir / "slowadd"
    plugin.write_text(SLOW_PLUGIN.format(marker=marker, dels=dels))
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    base = tmp_path / "d"
    cfg = pod_daemon_config(base, net, test_images.pause.reference).replace(
        'bin_dirs = ["/usr/lib/cni"]', f'bin_dirs = ["{bindir}", "/usr/lib/cni"]'
    )
    d = Crispyd(base, config=cfg)
    # bridge first, then the hanging plugin: the pod has an IP when crispyd dies
    conflist = json.loads(net.conflist())
    conflist["plugins"].insert(1, {"type": "slowadd"})
    (base / "net.d" / "10-test.conflist").write_text(json.dumps(conflist))
    d.start()
    baseline = host_state(base, net)
    errors: list[grpc.RpcError] = []

    def call() -> None:
        with d.client(timeout=60) as c:
            try:
                run_pod(c, pod_config(name="doomed"))
            except grpc.RpcError as e:
                errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), d.log()
        assert len(net.allocated()) == 1
        pod_dirs = os.listdir(d.state / "pods")
        assert len(pod_dirs) == 1
        d.kill()
        t.join(10)
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        with open(marker) as f:
            os.kill(int(f.read()), 9)

        d.start()  # recovery undoes the half-made pod before serving
        with d.client() as c:
            assert not c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert dels.read_text().split() == pod_dirs  # CNI DEL ran from the result cache
        assert net.allocated() == set()
        assert not (d.state / "pods" / pod_dirs[0]).exists()
        assert not (d.state / "ns" / pod_dirs[0]).exists()
        after = host_state(base, net)
        assert after["mounts"] == baseline["mounts"]
        assert not [r for r in after["rules"] if pod_dirs[0] in r]
        assert "half created" in d.log()
    finally:
        _remove_all_and_stop(d)
