"""Typed pod and container records (PodInfo, ContainerInfo) read what older and newer
crispy versions wrote in the `info` column: missing keys take defaults, bad values are
dropped, unknown keys are kept and written back. The integration test rewrites a live
pod's and container's rows to the shape the previous crispy wrote, restarts crispyd, and
drives both to the end."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from crispy.api import pb
from crispy.containers.record import Container, ContainerInfo, ImageMountPlan
from crispy.sandbox.pod import InfraInfo, Pod, PodInfo
from crispy.store import ContainerRow, PodRow, jsonrecord
from support.containers import container_config, run, stop, wait_exit
from support.daemon import Crispyd
from support.pods import pod_config, pod_status, remove_all_pods, run_pod, wait_shim
from support.registry_fixtures import TestImages

# The info of a pod with an infra container, as the crispy before typed records wrote it
# (a dict built in SandboxManager._plan, then filled in as the pod came up).
OLD_POD_INFO: dict[str, Any] = {
    "netns": "/run/crispy/ns/p/net",
    "utsns": "/run/crispy/ns/p/uts",
    "ipcns": "/run/crispy/ns/p/ipc",
    "network": True,
    "ips": ["10.88.0.7"],
    "cgroup_parent": "",
    "cgroup_path": "/crispy/p",
    "cgroup_made": True,
    "cgroup_parents_made": [],
    "shm": "/run/crispy/pods/p/shm",
    "shim_pid": 4242,
    "infra": {"id": "p", "pid": 4243, "start": 99, "snapshot": "infra/p"},
    "requested_handler": "",
    "shim_start": 98,
}

OLD_CONTAINER_INFO: dict[str, Any] = {
    "bundle": "/run/crispy/containers/c",
    "snapshot": "container/c",
    "log_path": "/var/log/pods/x/c/0.log",
    "pid": 4300,
    "handler": "runc",
    "stop_signal": 15,
    "image_mounts": [
        {
            "index": 2,
            "dest": "/data",
            "image": "sha256:" + "a" * 64,
            "sub_path": "sub",
            "snapshot": "image-mount/c/2",
            "target": "/run/crispy/containers/c/image-mounts/2",
        }
    ],
}


def test_a_current_row_reads_and_writes_back_unchanged() -> None:
    info = jsonrecord.load(PodInfo, OLD_POD_INFO)
    assert info.infra == InfraInfo(id="p", pid=4243, start=99, snapshot="infra/p")
    assert (info.requested_handler, info.shim_start, info.stopping) == ("", 98, False)
    assert jsonrecord.dump(info) == {**OLD_POD_INFO, "stopping": False, "removing": False}
    c = jsonrecord.load(ContainerInfo, OLD_CONTAINER_INFO)
    target = "/run/crispy/containers/c/image-mounts/2"
    want = ImageMountPlan(2, "/data", "sha256:" + "a" * 64, "sub", "image-mount/c/2", target)
    assert c.image_mounts == [want]
    assert jsonrecord.dump(c) == OLD_CONTAINER_INFO


def test_older_rows_lack_keys_and_those_mean_what_they_meant() -> None:
    older = {k: v for k, v in OLD_POD_INFO.items() if k not in ("requested_handler", "shim_start")}
    info = jsonrecord.load(PodInfo, {**older, "infra": None})
    assert info.requested_handler is None  # status then answers the resolved handler
    assert info.shim_start is None  # the shim is then matched by its command line
    assert info.infra is None
    pod = Pod.from_row(
        PodRow(
            id="p",
            name="n",
            state="ready",
            created_at=1,
            runtime_handler="runc",
            config=b"",
            info={},
        )
    )
    assert pod.info == PodInfo() and pod.ips == []
    c = jsonrecord.load(ContainerInfo, {"bundle": "/b", "pid": 7})
    assert (c.stop_signal, c.image_mounts, c.log_path) == (None, [], "")


def test_bad_values_are_dropped_and_unknown_keys_kept() -> None:
    doc = {
        **OLD_POD_INFO,
        "shim_pid": "4242",  # a string where an int belongs
        "ips": ["10.0.0.1", 5],  # a list with a bad item: the whole field is dropped
        "network": 1,  # not a bool
        "infra": ["not", "a", "dict"],
        "cgroup_made": None,
        "from_the_future": {"nested": [1, 2]},
    }
    info = jsonrecord.load(PodInfo, doc)
    assert (info.shim_pid, info.ips, info.network, info.infra) == (0, [], False, None)
    assert info.cgroup_made is False
    assert info.extra == {"from_the_future": {"nested": [1, 2]}}
    assert jsonrecord.dump(info)["from_the_future"] == {"nested": [1, 2]}
    assert jsonrecord.load(PodInfo, "not an object") == PodInfo()
    assert jsonrecord.load(PodInfo, None) == PodInfo()
    assert jsonrecord.load(InfraInfo, {"pid": True}).pid == 0  # a bool is no pid
    assert jsonrecord.load(ContainerInfo, {"stop_signal": None}).stop_signal is None
    mount = {"index": 1, "dest": "/d", "later": "x"}
    c = jsonrecord.load(ContainerInfo, {"image_mounts": [mount]})
    assert c.image_mounts[0].extra == {"later": "x"}
    assert jsonrecord.dump(c)["image_mounts"][0]["later"] == "x"


def test_unsupported_field_types_are_refused() -> None:
    @dataclass
    class Odd:
        when: tuple[int, int] = (0, 0)
        extra: dict[str, Any] = field(default_factory=dict)

    with pytest.raises(TypeError):
        jsonrecord.load(Odd, {"when": [1, 2]})


def test_records_round_trip_through_their_rows() -> None:
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"))
    c = Container("c", "p", "c_0", "running", 1, cfg, "sha256:x")
    c.info = jsonrecord.load(ContainerInfo, {**OLD_CONTAINER_INFO, "new": 1})
    row = c.to_row()
    assert isinstance(row, ContainerRow) and row.info["new"] == 1
    back = Container.from_row(row)
    assert back.info == c.info and (back.pid, back.bundle) == (4300, "/run/crispy/containers/c")


# -- a live pod and container whose rows an older crispy wrote ------------------------------


def _rewrite(db: Path, table: str, row_id: str, change: Any) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        (text,) = conn.execute(f"SELECT info FROM {table} WHERE id = ?", (row_id,)).fetchone()
        info = change(json.loads(text))
        conn.execute(f"UPDATE {table} SET info = ? WHERE id = ?", (json.dumps(info), row_id))


def _info(db: Path, table: str, row_id: str) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (text,) = conn.execute(f"SELECT info FROM {table} WHERE id = ?", (row_id,)).fetchone()
    return dict(json.loads(text))


def _as_older(info: dict[str, Any], drop: tuple[str, ...]) -> dict[str, Any]:
    older = {k: v for k, v in info.items() if k not in drop}
    return {**older, "written_by_a_newer_crispy": [1, "two"]}


@pytest.mark.root
def test_a_restarted_crispyd_drives_pods_and_containers_of_older_rows(
    tmp_path: Path, test_images: TestImages
) -> None:
    config = (
        'log_level = "debug"\n'
        f'sandbox_image = "{test_images.pause.reference}"\n'
        "[registry]\n"
        f'hosts_dir = "{tmp_path / "d" / "certs.d"}"\n'
    )
    d = Crispyd(tmp_path / "d", config=config).start()
    db = d.root / "crispy.db"
    try:
        with d.client(timeout=120) as c:
            c.image.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=test_images.busybox.reference))
            )
            pod_cfg = pod_config(network=pb.NODE, pid=pb.POD, log_directory=str(tmp_path / "l"))
            pod_id = run_pod(c, pod_cfg)
            wait_shim(c, pod_id)
            ctr_cfg = container_config(test_images.busybox.reference, command=["sleep", "1000"])
            cid = run(c, pod_id, pod_cfg, ctr_cfg)
            _, before = pod_status(c, pod_id)
        d.stop()
        # The shape of the crispy before this one: no requested_handler, no shim_start, no
        # stop_signal; and a key only a newer crispy knows.
        _rewrite(db, "pods", pod_id, lambda i: _as_older(i, ("requested_handler", "shim_start")))
        _rewrite(db, "containers", cid, lambda i: _as_older(i, ("stop_signal",)))

        d.start()
        with d.client(timeout=60) as c:
            status, after = pod_status(c, pod_id)
            assert status.state == pb.SANDBOX_READY
            assert status.runtime_handler == "runc"  # no requested one: the resolved one
            assert (after["shimPid"], after["pid"]) == (before["shimPid"], before["pid"])
            ctr = c.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
            assert ctr.state == pb.CONTAINER_RUNNING
            assert ctr.stop_signal == pb.SIGTERM  # worked out again from the image
            stop(c, cid, timeout=10)
            assert wait_exit(c, cid).exit_code == 143  # SIGTERM, not a KILL after the timeout
            # Saved since the restart: the unknown key is still there, the missing ones added.
            pod_info = _info(db, "pods", pod_id)
            ctr_info = _info(db, "containers", cid)
            assert pod_info["written_by_a_newer_crispy"] == [1, "two"]
            assert ctr_info["written_by_a_newer_crispy"] == [1, "two"]
            assert ctr_info["stop_signal"] == 15
            c.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            c.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
            assert c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT count(*) FROM pods").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM containers").fetchone() == (0,)
        assert not (d.state / "pods" / pod_id).exists()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(grpc.RpcError), d.client(timeout=60) as c:
                remove_all_pods(c)
        d.stop()
