"""crispyd SIGKILLed while containers run, exit and wait to start: the next crispyd tells
the truth about each of them and can still drive them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from support.containers import (
    container_config,
    create,
    exec_sync,
    new_pod,
    remove,
    run,
    start,
    status,
    stop,
    wait_exit,
    wait_state,
)
from support.daemon import Crispyd
from support.pods import TestNetwork, pod_daemon_config, remove_all_pods
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root


@pytest.fixture
def daemon(tmp_path: Path, test_images: TestImages) -> Iterator[Crispyd]:
    net = TestNetwork.random("c", 247, tmp_path / "ipam")
    d = Crispyd(
        tmp_path / "d", config=pod_daemon_config(tmp_path / "d", net, test_images.pause.reference)
    )
    (d.base / "net.d" / "10-test.conflist").write_text(net.conflist())
    d.start()
    with d.client(timeout=120) as c:
        c.image.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=test_images.busybox.reference))
        )
    yield d
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(grpc.RpcError), d.client(timeout=60) as c:
            remove_all_pods(c)
    d.stop()
    net.remove_bridge()


def test_containers_after_a_sigkilled_crispyd(
    daemon: Crispyd, tmp_path: Path, test_images: TestImages
) -> None:
    img = test_images.busybox.reference
    with daemon.client(timeout=60) as c:
        pod_id, pod_cfg = new_pod(c, tmp_path / "logs")
        running = run(
            c, pod_id, pod_cfg, container_config(img, name="running", command=["sleep", "1000"])
        )
        later = run(
            c,
            pod_id,
            pod_cfg,
            container_config(img, name="later", command=["sh", "-c", "sleep 2; exit 7"]),
        )
        created = create(
            c,
            pod_id,
            pod_cfg,
            container_config(img, name="created", command=["sh", "-c", "exit 4"]),
        )
        done = run(
            c, pod_id, pod_cfg, container_config(img, name="done", command=["sh", "-c", "exit 3"])
        )
        wait_exit(c, done)
        wait_state(c, running, pb.CONTAINER_RUNNING)
        before = {cid: status(c, cid) for cid in (running, later, created, done)}
        assert before[later].state == pb.CONTAINER_RUNNING

    killed_at = time.time_ns()
    daemon.kill()
    time.sleep(3)  # `later` exits while no crispyd runs
    daemon.start()

    with daemon.client(timeout=60) as c:
        st = {cid: status(c, cid) for cid in before}
        assert st[running].state == pb.CONTAINER_RUNNING
        assert st[running].started_at == before[running].started_at
        assert st[later].state == pb.CONTAINER_EXITED and st[later].exit_code == 7
        assert killed_at < st[later].finished_at < time.time_ns()
        assert st[later].reason == "Error"
        assert st[created].state == pb.CONTAINER_CREATED
        assert st[done].state == pb.CONTAINER_EXITED and st[done].exit_code == 3
        assert st[done].finished_at == before[done].finished_at

        # the running one is still driveable
        assert exec_sync(c, running, ["echo", "alive"]).stdout == b"alive\n"
        stop(c, running, timeout=2)
        assert status(c, running).state == pb.CONTAINER_EXITED
        # the created one can still start
        start(c, created)
        assert wait_exit(c, created).exit_code == 4
        for cid in before:
            remove(c, cid)
        assert not c.runtime.ListContainers(pb.ListContainersRequest()).containers
