"""Fault injection: crispyd SIGKILLed at every step boundary of every multi-step operation
(and at random moments), restarted, and checked against the host each time.

crispyd runs with CRISPY_TEST_CRASH_FILE (crispy/testhook.py). For each operation a
clean pass first records the steps it goes through (`crash_point` calls; a pull reaches
its layer steps once per layer). Then, for each of them, one round:

1. bring the node to the operation's precondition (unarmed);
2. arm that step and send the operation: crispyd SIGKILLs itself there;
3. restart crispyd and check that what it lists and what is on the host agree
   (support/consistency.py: no half-made object shown, nothing leaked, blobs intact);
4. finish the operation as kubelet would (retry, or reuse what the first try made) and
   check its result.

Each test ends by removing everything and comparing the host with how it started.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support import containers as ctr
from support.consistency import problems
from support.daemon import Crispyd
from support.pods import (
    TestNetwork,
    host_state,
    pod_config,
    pod_daemon_config,
    remove_pod,
    run_pod,
    stop_pod,
    wait_shim,
)
from support.registry_fixtures import TestImages

pytestmark = [pytest.mark.root, pytest.mark.slow]

KillPoint = tuple[str, int]  # (step, the n-th time it is reached)
ROUNDS: Counter[str] = Counter()  # kill rounds run, per operation: reported at the end


class Faults:
    """The crash file crispyd re-reads at each step, and the trace it appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trace_path = Path(f"{path}.trace")
        self.generation = 0
        path.write_text("")

    def arm(self, point: KillPoint) -> None:
        self.generation += 1
        self.path.write_text(f"{self.generation} {point[0]}#{point[1]}\n")

    def disarm(self) -> None:
        self.generation += 1
        self.path.write_text("")

    def clear_trace(self) -> None:
        self.trace_path.write_text("")

    def points(self) -> list[KillPoint]:
        """Every step reached since clear_trace(), with how many times before it was."""
        seen: Counter[str] = Counter()
        out = []
        for step in self.trace_path.read_text().split():
            seen[step] += 1
            out.append((step, seen[step]))
        return out


@dataclass
class Rig:
    d: Crispyd
    net: TestNetwork
    faults: Faults
    images: TestImages
    cgroup: str  # this module's cgroup parent, below which every pod's cgroup goes
    log_dir: Path
    c: CriClient = field(init=False)

    def __post_init__(self) -> None:
        self.c = self.d.client(timeout=60)

    def restart(self) -> None:
        self.c.close()
        self.d.start()
        self.c = self.d.client(timeout=60)

    def consistent(self, when: str) -> None:
        found = problems(self.d, self.c, self.net, self.cgroup)
        assert not found, f"{when}:\n" + "\n".join(found) + "\n" + self.d.log()[-6000:]

    def kill_round(self, op: str, point: KillPoint, act: Callable[[], object]) -> None:
        """Arm `point`, run `act`: crispyd must die there. Then restart and check."""
        self.faults.arm(point)
        try:
            act()
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{op} at {point}: {e}"
        # A step may also come after the reply (a plain pod's shim starts beside it).
        try:
            rc = self.d.wait_exit(10)
        except Exception:
            pytest.fail(f"{op}: crispyd was not killed at {point}:\n{self.d.log()[-3000:]}")
        assert rc == -signal.SIGKILL, f"{op} at {point}: crispyd exited {rc}"
        self.faults.disarm()
        ROUNDS[op] += 1
        self.restart()
        assert "recovery failed" not in self.d.log(), self.d.log()[-6000:]
        self.consistent(f"after a kill at {point} in {op}")

    # -- the node's objects, kubelet-style ------------------------------------------------

    def pod_cfg(self, name: str, pid: pb.NamespaceMode.ValueType) -> pb.PodSandboxConfig:
        cfg = pod_config(name, pid=pid, log_directory=str(self.log_dir / name))
        # kubelet's shape: /kubepods/<qos>/pod<uid>, below a parent this test owns
        cfg.linux.cgroup_parent = f"/{self.cgroup}/besteffort/pod{cfg.metadata.uid}"
        return cfg

    def pods_named(self, name: str) -> list[pb.PodSandbox]:
        items = self.c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        return [p for p in items if p.metadata.name == name]

    def no_pod(self, name: str) -> None:
        for p in self.pods_named(name):
            stop_pod(self.c, p.id)
            remove_pod(self.c, p.id)

    def ready_pod(self, name: str, pid: pb.NamespaceMode.ValueType) -> str:
        """A ready pod of that name: the one there (as kubelet reuses a ready sandbox of its
        pod), else a new one once the others are gone."""
        for p in self.pods_named(name):
            if p.state == pb.SANDBOX_READY:
                return str(p.id)
        self.no_pod(name)
        pod_id = run_pod(self.c, self.pod_cfg(name, pid))
        assert wait_shim(self.c, pod_id)["shimPid"]  # its start is over: nothing in flight
        return pod_id

    def containers(self, pod_id: str) -> list[pb.Container]:
        req = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
        return list(self.c.runtime.ListContainers(req).containers)

    def create(self, pod_id: str) -> str:
        status = self.c.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        meta = status.status.metadata
        pod_cfg = pb.PodSandboxConfig(metadata=meta, log_directory=str(self.log_dir / meta.name))
        # As pid 1 it must handle SIGTERM itself, or every graceful stop waits out its timeout.
        command = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
        cfg = ctr.container_config(self.images.busybox.reference, name="work", command=command)
        return ctr.create(self.c, pod_id, pod_cfg, cfg)

    def only_container(self, pod_id: str, state: int) -> str:
        """The pod's one container, in `state` (CREATED or RUNNING); made if need be."""
        for x in self.containers(pod_id):
            if x.state == state:
                return str(x.id)
            ctr.remove(self.c, x.id)
        cid = self.create(pod_id)
        if state == pb.CONTAINER_RUNNING:
            ctr.start(self.c, cid)
        return cid

    def image_present(self, ref: str) -> bool:
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref))
        return self.c.image.ImageStatus(req).HasField("image")

    def pull(self, ref: str) -> None:
        self.c.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)

    def rmi(self, ref: str) -> None:
        self.c.image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))

    def remove_everything(self) -> None:
        for p in self.c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            stop_pod(self.c, p.id)
            remove_pod(self.c, p.id)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, test_images: TestImages) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("faults")
    net = TestNetwork.random("f", 247, base / "ipam")
    d = Crispyd(base / "d", config=pod_daemon_config(base / "d", net, test_images.pause.reference))
    (d.base / "net.d" / "10-test.conflist").write_text(net.conflist())
    faults = Faults(base / "crash")
    d.env["CRISPY_TEST_CRASH_FILE"] = str(faults.path)
    d.start()
    r = Rig(d, net, faults, test_images, f"crispy-faults-{uuid.uuid4().hex[:8]}", base / "logs")
    yield r
    faults.disarm()
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(grpc.RpcError):
            r.remove_everything()
    r.c.close()
    d.stop()
    net.remove_bridge()
    _report()


def _report() -> None:
    total = sum(ROUNDS.values())
    parts = ", ".join(f"{op} {n}" for op, n in sorted(ROUNDS.items()))
    print(f"\nfault injection: {total} kill rounds ({parts})")


@contextlib.contextmanager
def host_unchanged(r: Rig) -> Iterator[None]:
    """The test's body may do anything; once everything is removed, the host is as before."""

    def host() -> dict[str, set[str]]:
        state = host_state(r.d.base, r.net)
        # Other test sessions' pods come and go on the host: only this network's ports count.
        ports = Path("/sys/class/net") / r.net.bridge / "brif"
        state["links"] = set(os.listdir(ports)) if ports.is_dir() else set()
        return state

    r.remove_everything()
    before = host()
    yield
    r.faults.disarm()
    r.remove_everything()
    r.consistent("after removing everything")
    assert host() == before
    assert r.net.allocated() == set()


def run_op(
    r: Rig,
    op: str,
    prepare: Callable[[], object],
    act: Callable[[object], object],
    finish: Callable[[object], None],
    minimum: int,
) -> int:
    """Trace `act` once cleanly, then kill crispyd at each step it went through."""
    ctx = prepare()
    r.faults.clear_trace()
    act(ctx)
    time.sleep(0.2)  # steps that come just after the reply
    points = r.faults.points()
    finish(ctx)
    assert len(points) >= minimum, f"{op}: only {points}"
    for point in points:
        ctx = prepare()
        r.kill_round(op, point, lambda ctx=ctx: act(ctx))
        finish(ctx)
    return len(points)


# -- images ---------------------------------------------------------------------------------


def test_pull_and_remove_image(rig: Rig) -> None:
    r = rig
    ref = r.images.layers.reference  # three layers, whiteouts and an opaque dir

    def absent() -> None:
        if r.image_present(ref):
            r.rmi(ref)

    def pulled_again(_: object) -> None:
        r.pull(ref)  # kubelet pulls again
        assert r.image_present(ref)
        r.consistent("after the pull was finished")

    def present() -> None:
        if not r.image_present(ref):
            r.pull(ref)

    def removed_again(_: object) -> None:
        r.rmi(ref)
        assert not r.image_present(ref)
        r.consistent("after the removal was finished")

    with host_unchanged(r):
        run_op(r, "PullImage", absent, lambda _: r.pull(ref), pulled_again, minimum=10)
        run_op(r, "RemoveImage", present, lambda _: r.rmi(ref), removed_again, minimum=4)
        absent()
    blobs = r.d.root / "content" / "blobs" / "sha256"
    assert not os.listdir(blobs), "a removed image's blobs stayed"


# -- pods and containers ----------------------------------------------------------------------

MODES = {"plain": pb.CONTAINER, "infra": pb.POD}  # infra: a shared PID namespace


@pytest.fixture(scope="module")
def pod_images(rig: Rig) -> None:
    rig.pull(rig.images.busybox.reference)
    rig.pull(rig.images.pause.reference)


@pytest.mark.parametrize("mode", MODES)
def test_run_pod(rig: Rig, pod_images: None, mode: str) -> None:
    r, name, pid = rig, f"run-{mode}", MODES[mode]

    def finish(_: object) -> None:
        pod_id = r.ready_pod(name, pid)  # the killed try's pod if it got ready, else a new one
        assert len(r.pods_named(name)) == 1
        status = r.c.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        assert status.status.network.ip in r.net.allocated()

    with host_unchanged(r):
        run_op(
            r,
            f"RunPodSandbox({mode})",
            lambda: r.no_pod(name),
            lambda _: run_pod(r.c, r.pod_cfg(name, pid)),
            finish,
            minimum=6 if mode == "plain" else 11,
        )


@pytest.mark.parametrize("mode", MODES)
def test_create_and_start_container(rig: Rig, pod_images: None, mode: str) -> None:
    r, name, pid = rig, f"ctr-{mode}", MODES[mode]

    def empty_pod() -> str:
        pod_id = r.ready_pod(name, pid)
        for x in r.containers(pod_id):
            ctr.remove(r.c, x.id)
        return pod_id

    def created(pod_id: object) -> None:
        assert isinstance(pod_id, str)
        cid = r.only_container(pod_id, pb.CONTAINER_CREATED)
        ctr.start(r.c, cid)
        ctr.wait_state(r.c, cid, pb.CONTAINER_RUNNING)

    def with_created() -> str:
        pod_id = r.ready_pod(name, pid)
        return r.only_container(pod_id, pb.CONTAINER_CREATED)

    def running(cid: object) -> None:
        st = ctr.status(r.c, str(cid))
        if st.state == pb.CONTAINER_CREATED:  # the start's reply was lost: kubelet retries
            ctr.start(r.c, str(cid))
        st = ctr.wait_state(r.c, str(cid), pb.CONTAINER_RUNNING)
        assert st.started_at > 0
        assert ctr.exec_sync(r.c, str(cid), ["true"]).exit_code == 0

    with host_unchanged(r):
        run_op(r, f"CreateContainer({mode})", empty_pod, lambda p: r.create(str(p)), created, 5)
        run_op(
            r,
            f"StartContainer({mode})",
            with_created,
            lambda cid: ctr.start(r.c, str(cid)),
            running,
            minimum=2,
        )


@pytest.mark.parametrize("mode", MODES)
def test_stop_and_remove_container(rig: Rig, pod_images: None, mode: str) -> None:
    r, name, pid = rig, f"ctrstop-{mode}", MODES[mode]

    def with_running() -> str:
        return r.only_container(r.ready_pod(name, pid), pb.CONTAINER_RUNNING)

    def stopped(cid: object) -> None:
        ctr.stop(r.c, str(cid), timeout=10)
        st = ctr.wait_exit(r.c, str(cid))
        assert st.finished_at >= st.started_at > 0

    def removed(cid: object) -> None:
        ctr.remove(r.c, str(cid))
        ids = {x.id for x in r.c.runtime.ListContainers(pb.ListContainersRequest()).containers}
        assert cid not in ids

    with host_unchanged(r):
        run_op(
            r,
            f"StopContainer({mode})",
            with_running,
            lambda cid: ctr.stop(r.c, str(cid), timeout=10),
            stopped,
            minimum=1,
        )
        run_op(
            r,
            f"RemoveContainer({mode})",
            with_running,
            lambda cid: ctr.remove(r.c, str(cid)),
            removed,
            minimum=4,
        )


@pytest.mark.parametrize("mode", MODES)
def test_stop_and_remove_pod(rig: Rig, pod_images: None, mode: str) -> None:
    r, name, pid = rig, f"stop-{mode}", MODES[mode]

    def busy_pod() -> str:
        pod_id = r.ready_pod(name, pid)
        r.only_container(pod_id, pb.CONTAINER_RUNNING)
        return pod_id

    def stopped(pod_id: object) -> None:
        stop_pod(r.c, str(pod_id))  # kubelet stops again until it is answered
        status = r.c.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=str(pod_id))
        ).status
        assert status.state == pb.SANDBOX_NOTREADY
        assert not status.network.ip
        assert all(x.state == pb.CONTAINER_EXITED for x in r.containers(str(pod_id)))
        remove_pod(r.c, str(pod_id))

    def removed(pod_id: object) -> None:
        remove_pod(r.c, str(pod_id))
        assert not r.pods_named(name)
        assert not r.containers(str(pod_id))

    with host_unchanged(r):
        run_op(
            r,
            f"StopPodSandbox({mode})",
            busy_pod,
            lambda p: stop_pod(r.c, str(p)),
            stopped,
            minimum=3 if mode == "plain" else 5,
        )
        run_op(
            r,
            f"RemovePodSandbox({mode})",
            busy_pod,
            lambda p: remove_pod(r.c, str(p)),
            removed,
            minimum=8 if mode == "plain" else 11,
        )


# -- kills at random moments ------------------------------------------------------------------


def test_random_kills(rig: Rig, pod_images: None) -> None:
    """SIGKILL from outside at a random moment of a pod's whole life, or of an image's:
    catches what falls between the named steps (inside a CNI plugin or a runtime call, a
    half-written file, a layer half unpacked by a worker thread)."""
    r = rig
    seed = int(os.environ.get("CRISPY_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    ref = r.images.layers.reference

    def pod_life() -> None:
        pod_id = r.ready_pod("random", rng.choice(list(MODES.values())))
        cid = r.only_container(pod_id, pb.CONTAINER_RUNNING)
        ctr.stop(r.c, cid)
        stop_pod(r.c, pod_id)
        remove_pod(r.c, pod_id)

    def image_life() -> None:
        r.pull(ref)
        r.rmi(ref)

    with host_unchanged(r):
        took = {}
        for life in (pod_life, image_life):
            t0 = time.monotonic()
            life()
            took[life] = time.monotonic() - t0
        for i in range(int(os.environ.get("CRISPY_FAULT_RANDOM_ROUNDS") or 16)):
            life = (pod_life, image_life)[i % 2]
            delay = rng.uniform(0, took[life])
            pid = r.d.proc.pid if r.d.proc else 0
            killer = threading.Timer(delay, lambda pid=pid: _kill(pid))
            killer.start()
            with contextlib.suppress(grpc.RpcError):
                life()
            killer.join()
            r.d.wait_exit(10)
            ROUNDS["random"] += 1
            r.restart()
            r.consistent(f"random round {i} (seed {seed}, {life.__name__} {delay:.3f}s in)")
            life()  # a whole life still works after it


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
