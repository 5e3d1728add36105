"""`crispy run` without a sandbox image, and how every command words a failed call.

A runtime's own error names the RPC, its code and its message; only a runtime that can't
be connected to is "cannot reach".
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from crispy.api import pb
from crispy.cli.client import CriClient, describe_error, unreachable
from support.containers import container_config, new_pod, run, wait_exit
from support.daemon import Crispyd
from support.daemon import crispy_cli as crispy
from support.pods import TestNetwork, pod_config, pod_daemon_config, remove_all_pods
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

CANNOT_REACH = "cannot reach the runtime"
SLEEP = ["sleep", "1000"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fails(endpoint: str, *args: str, timeout: float = 60) -> str:
    """Run a command that must exit 1, with nothing on stdout and no traceback; its stderr."""
    r = crispy(endpoint, *args, timeout=timeout)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def names_the_call(err: str, prefix: str, rpc: str, code: str, *message: str) -> None:
    """One line, `<prefix>RPC: CODE: <the runtime's message>`, and no blame on the socket."""
    assert err.startswith(f"{prefix}{rpc}: {code}: "), err
    assert all(m in err for m in message), (message, err)
    assert CANNOT_REACH not in err, err
    assert err.count("\n") == 1, err


def pod_names(cri: CriClient) -> list[str]:
    return [p.metadata.name for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]


# -- crispy run on a node that can't pull the sandbox image -----------------------------------


class NoPause:
    """A crispyd whose sandbox image is on a registry port nobody listens on."""

    def __init__(self, daemon: Crispyd, sandbox_image: str) -> None:
        self.daemon = daemon
        self.sandbox_image = sandbox_image


@pytest.fixture(scope="module")
def no_pause(
    tmp_path_factory: pytest.TempPathFactory, test_images: TestImages
) -> Iterator[NoPause]:
    base = tmp_path_factory.mktemp("nopause")
    net = TestNetwork.random("e", 246, base / "ipam")
    sandbox_image = f"127.0.0.1:{closed_port()}/crispy-test/pause:none"
    d = Crispyd(base / "d", config=pod_daemon_config(base / "d", net, sandbox_image))
    (d.base / "net.d" / "10-test.conflist").write_text(net.conflist())
    try:
        d.start()
        yield NoPause(d, sandbox_image)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(grpc.RpcError), d.client(timeout=60) as c:
                remove_all_pods(c)
        d.stop()
        net.remove_bridge()


def test_run_needs_no_sandbox_image(
    no_pause: NoPause, test_images: TestImages, tmp_path: Path
) -> None:
    ep = no_pause.daemon.endpoint
    name = f"run-{uuid.uuid4().hex[:6]}"
    # the image is pulled from the test registry; the sandbox image never is
    argv = ["run", "--name", name, "--log-dir", str(tmp_path / "logs")]
    r = crispy(ep, *argv, test_images.busybox.reference, "sh", "-c", "echo pid $$; exit 4")
    # the container's shell is PID 1 of a namespace of its own
    assert (r.returncode, r.stdout, r.stderr) == (4, "pid 1\n", "")
    with no_pause.daemon.client() as c:
        (pod,) = [
            p
            for p in c.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
            if p.metadata.name == name
        ]
        status = c.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id))
        options = status.status.linux.namespaces.options
        assert (options.pid, options.network) == (pb.CONTAINER, pb.POD)
        spec = pb.ImageSpec(image=no_pause.sandbox_image)
        assert not c.image.ImageStatus(pb.ImageStatusRequest(image=spec)).HasField("image")
        remove_all_pods(c)


def test_run_share_pid_fails_naming_the_call_and_the_runtimes_message(
    no_pause: NoPause, test_images: TestImages
) -> None:
    ep = no_pause.daemon.endpoint
    name = f"run-{uuid.uuid4().hex[:6]}"
    err = fails(ep, "run", "--share-pid", "--name", name, test_images.busybox.reference, "true")
    # crispyd answers UNAVAILABLE for a registry it can't reach: that is not the socket
    registry, _, _ = no_pause.sandbox_image.partition("/")
    names_the_call(err, "crispy: ", "RunPodSandbox", "UNAVAILABLE", registry, "pause")
    with no_pause.daemon.client() as c:
        assert name not in pod_names(c)


# -- a runtime's errors name the call ---------------------------------------------------------


def test_runtime_errors_name_the_rpc_code_and_message(
    pod_crispyd: Crispyd, pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    ep = pod_crispyd.endpoint
    busybox = pod_images.busybox.reference
    missing = f"{pod_images.config.registry}/crispy-test/none:{uuid.uuid4().hex[:6]}"
    offline = f"127.0.0.1:{closed_port()}/crispy-test/none:1"

    err = fails(ep, "pull", missing)
    names_the_call(err, f"crispy: pulling {missing}: ", "PullImage", "NOT_FOUND", missing)
    err = fails(ep, "pull", offline)
    names_the_call(err, f"crispy: pulling {offline}: ", "PullImage", "UNAVAILABLE", "127.0.0.1")
    err = fails(ep, "run", "--rm", missing, "true")
    names_the_call(err, f"crispy run: pulling {missing}: ", "PullImage", "NOT_FOUND", missing)
    assert pods.runtime.ListContainers(pb.ListContainersRequest()).containers == []

    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(MessageToDict(pod_config(f"cli-err-{uuid.uuid4().hex[:6]}"))))
    err = fails(ep, "runp", "--runtime", "no-such-handler", str(pod_file))
    names_the_call(err, "crispy: ", "RunPodSandbox", "INVALID_ARGUMENT", "no-such-handler")

    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    pod_file.write_text(json.dumps(MessageToDict(pod_cfg)))
    ctr_file = tmp_path / "ctr.json"
    ctr_file.write_text(json.dumps(MessageToDict(container_config(missing))))
    err = fails(ep, "create", pod_id, str(ctr_file), str(pod_file))
    names_the_call(err, "crispy: ", "CreateContainer", "NOT_FOUND", missing)

    cid = run(pods, pod_id, pod_cfg, container_config(busybox, command=["true"]))
    wait_exit(pods, cid)
    err = fails(ep, "exec", "--sync", cid, "true")
    names_the_call(err, "crispy: ", "ExecSync", "FAILED_PRECONDITION", cid)
    # a per-ID command says which container, then the call
    err = fails(ep, "start", cid)
    names_the_call(err, f"crispy: starting {cid}: ", "StartContainer", "FAILED_PRECONDITION")


def test_a_calls_deadline_on_a_connected_runtime_is_not_cannot_reach(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    pod_id, pod_cfg = new_pod(pods, tmp_path / "logs")
    cid = run(pods, pod_id, pod_cfg, container_config(pod_images.busybox.reference, command=SLEEP))
    req = pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "5"])
    with pytest.raises(grpc.RpcError) as e:
        pods.runtime.ExecSync(req, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not unreachable(e.value)
    assert describe_error(e.value).startswith("ExecSync: DEADLINE_EXCEEDED: ")


# -- only a runtime that can't be connected to is "cannot reach" ------------------------------


def test_no_socket_is_cannot_reach_for_every_kind_of_command(
    tmp_path: Path, test_images: TestImages
) -> None:
    ep = f"unix://{tmp_path}/none.sock"
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(MessageToDict(pod_config("unreached"))))
    for args in (
        ["version"],
        ["pods"],
        ["ps", "-a"],
        ["pull", test_images.busybox.reference],
        ["rm", "abc"],
        ["stopp", "abc"],
        ["runp", str(pod_file)],
        ["run", "--rm", test_images.busybox.reference, "true"],
    ):
        err = fails(ep, *args)
        assert err.startswith(f"crispy: {CANNOT_REACH} at {ep}: "), (args, err)
        assert err.count("\n") == 1, err


def test_a_socket_nobody_serves_is_cannot_reach(tmp_path: Path) -> None:
    # A stale socket file: connect is refused.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    err = fails(f"unix://{stale}", "pods")
    assert err.startswith(f"crispy: {CANNOT_REACH} at unix://{stale}: "), err
    # A socket that accepts connections but never speaks: the call's deadline ends the
    # connect, and that too is the runtime not being there.
    silent = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(silent))
        s.listen(8)
        r = crispy(f"unix://{silent}", "--timeout", "1", "pods")
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith(f"crispy: {CANNOT_REACH} at unix://{silent}: "), r.stderr
