"""The minimal configs real clients send, end to end on the real daemon.

critest builds most pods from metadata alone (plus labels and `linux: {}`) and most
containers from metadata, an image and a command; kubelet leaves every field it has no
value for at its protobuf zero value. So an unset `namespace_options` means PID, IPC and
network `POD` (an infra container from the FROM-scratch pause image), an unset `linux`
or `security_context` means the defaults, pod names run to 253 characters, and distroless
images lack every mount point. These tests send exactly such shapes, built here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from support.containers import exec_sync, log_text, status, wait_exit, wait_state
from support.daemon import Crispyd
from support.exec_client import ExecStreams
from support.exec_client import run as exec_run
from support.images import push_image
from support.pods import CNI_BIN, TestNetwork, pod_status
from support.portforward_client import forward, spdy
from support.registry import Registry
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

HANDLERS = ["runc", "crun", "runsc"]


def bare_pod(name: str | None = None, log_dir: Path | None = None) -> pb.PodSandboxConfig:
    """What critest's RunDefaultPodSandbox sends: metadata, `linux: {}`, and nothing else."""
    uid = uuid.uuid4().hex
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name or f"create-PodSandbox-for-container-{uuid.uuid4()}",
            uid=f"cri-test-uid{uid}",
            namespace=f"cri-test-namespace{uid}",
            attempt=2,
        ),
        log_directory=str(log_dir) if log_dir else "",
        linux=pb.LinuxPodSandboxConfig(),
    )


def bare_container(image: str, command: list[str], log_path: str = "") -> pb.ContainerConfig:
    """A container with metadata, image and command: no `linux` section at all."""
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=f"ctr-{uuid.uuid4().hex[:8]}", attempt=2),
        image=pb.ImageSpec(image=image),
        command=command,
        log_path=log_path,
    )


def run_bare(cri: CriClient, config: pb.PodSandboxConfig, handler: str = "") -> str:
    resp = cri.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=120
    )
    return str(resp.pod_sandbox_id)


def start_in(
    cri: CriClient,
    pod_id: str,
    pod: pb.PodSandboxConfig,
    config: pb.ContainerConfig,
    running: bool = True,
) -> str:
    cid = cri.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod),
        timeout=60,
    ).container_id
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    if running:
        wait_state(cri, cid, pb.CONTAINER_RUNNING)
    return str(cid)


def sh(cri: CriClient, cid: str, script: str) -> str:
    resp = exec_sync(cri, cid, ["sh", "-c", script], timeout=20)
    assert resp.exit_code == 0, resp.stderr
    return resp.stdout.decode()


def teardown(cri: CriClient, pod_id: str) -> None:
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


@pytest.mark.parametrize("handler", HANDLERS)
def test_metadata_only_pod_shares_pid_with_scratch_pause(
    pods: CriClient, pod_images: TestImages, pod_crispyd: Crispyd, handler: str
) -> None:
    """Unset namespace_options: PID POD, so an infra container of the scratch pause image
    (no /proc, /dev, /sys, /etc in it) is PID 1 of the containers' namespace."""
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg, handler)
    st, info = pod_status(pods, pod_id)
    assert st.state == pb.SANDBOX_READY
    opts = st.linux.namespaces.options
    assert (opts.network, opts.pid, opts.ipc) == (pb.POD, pb.POD, pb.POD)
    assert info["pid"] > 0, info
    cid = start_in(pods, pod_id, cfg, bare_container(pod_images.busybox.reference, ["top"]))
    if handler != "runsc":
        # runsc without `sandbox_container` runs each container in a gVisor kernel of its
        # own, so no PID namespace spans two of them; the pause still has to run there.
        assert sh(pods, cid, "cat /proc/1/cmdline").split("\0")[0] == "/pause"
    # The runtime made the infra's mount points, yet it runs read-only as 65535 (pause's USER).
    infra = pod_crispyd.state / "pods" / pod_id / "infra"
    bundle = json.loads((infra / "config.json").read_text())
    assert bundle["root"]["readonly"] is True
    assert bundle["process"]["user"] == {"uid": 65535, "gid": 65535}
    teardown(pods, pod_id)


def test_pod_name_of_253_characters(pods: CriClient, pod_images: TestImages) -> None:
    """The hostname is the name cut as kubelet cuts it: 63 characters, no trailing - or ."""
    name = "a" * 61 + "-." + "b" * 190
    assert len(name) == 253
    cfg = bare_pod(name)
    pod_id = run_bare(pods, cfg)
    cid = start_in(pods, pod_id, cfg, bare_container(pod_images.busybox.reference, ["top"]))
    want = "a" * 61
    assert sh(pods, cid, "hostname").strip() == want
    assert sh(pods, cid, "cat /etc/hostname").strip() == want
    assert want in sh(pods, cid, "cat /etc/hosts")
    env = sh(pods, cid, "echo $HOSTNAME").strip()
    assert env == want
    st, _ = pod_status(pods, pod_id)
    assert st.metadata.name == name
    teardown(pods, pod_id)


@pytest.mark.parametrize("handler", HANDLERS)
def test_scratch_image_with_readonly_rootfs(
    pods: CriClient, pod_images: TestImages, handler: str
) -> None:
    """A distroless-style image (only /busybox) read-only: the runtime still makes /proc,
    /dev, /sys, /etc/hosts and /etc/resolv.conf to mount on."""
    img = pod_images.scratch.reference
    pods.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=img)), timeout=120)
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg, handler)
    ctr = bare_container(img, ["/busybox", "sleep", "3600"])
    ctr.linux.security_context.readonly_rootfs = True
    cid = start_in(pods, pod_id, cfg, ctr)

    def bb(script: str) -> pb.ExecSyncResponse:
        return exec_sync(pods, cid, ["/busybox", "sh", "-c", script], timeout=20)

    out = bb("cat /etc/hosts /etc/resolv.conf /etc/hostname; ls /proc/self/ns; ls -d /sys/fs")
    assert out.exit_code == 0, out.stderr
    assert b"localhost" in out.stdout and b"pid" in out.stdout and b"/sys/fs" in out.stdout
    refused = bb("echo x > /written")
    assert refused.exit_code != 0 and b"Read-only file system" in refused.stderr
    assert bb("echo x > /dev/shm/ok && cat /dev/shm/ok").stdout == b"x\n"
    teardown(pods, pod_id)


def test_container_without_linux_section(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    """No `linux`: default capabilities, root (the image's user), no limits, writable root."""
    cfg = bare_pod(log_dir=tmp_path / "logs")
    pod_id = run_bare(pods, cfg)
    ctr = bare_container(pod_images.busybox.reference, ["top"], log_path="c.log")
    cid = start_in(pods, pod_id, cfg, ctr)
    st = status(pods, cid)
    assert st.user.linux.uid == 0 and st.user.linux.gid == 0
    assert st.log_path == str(tmp_path / "logs" / "c.log")
    # containerd's 14 default capabilities, no more: CapEff 0x00000000a80425fb
    caps = sh(pods, cid, "grep CapEff /proc/self/status").split()[1]
    assert int(caps, 16) == 0xA80425FB
    assert sh(pods, cid, "echo ok > /written && cat /written") == "ok\n"
    teardown(pods, pod_id)


def test_empty_log_directory_means_no_log(pods: CriClient, pod_images: TestImages) -> None:
    """A pod without log_directory: the container runs, and no log file is written anywhere."""
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg)
    ctr = bare_container(pod_images.busybox.reference, ["echo", "hi"], "c.log")
    cid = start_in(pods, pod_id, cfg, ctr, running=False)
    st = wait_exit(pods, cid)
    assert st.exit_code == 0
    assert st.log_path == ""
    assert not Path("c.log").exists()
    teardown(pods, pod_id)


def test_streaming_logs_and_stats_on_a_bare_pod(
    pods: CriClient, pod_images: TestImages, tmp_path: Path
) -> None:
    """exec, attach, port-forward, logs and stats on a metadata-only pod (infra container)."""
    cfg = bare_pod(log_dir=tmp_path / "logs")
    pod_id = run_bare(pods, cfg)
    httpd = "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www; exec top -b"
    ctr = bare_container(pod_images.busybox.reference, ["sh", "-c", httpd], log_path="c.log")
    ctr.stdin = True
    cid = start_in(pods, pod_id, cfg, ctr)
    # also a container that attaches to nothing but cat
    cat = bare_container(pod_images.busybox.reference, ["cat"], log_path="cat.log")
    cat.stdin = True
    cat_id = start_in(pods, pod_id, cfg, cat)

    async def streams() -> None:
        url = pods.runtime.Exec(
            pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "echo $((6*7))"], stdout=True),
            timeout=10,
        ).url
        out = await exec_run(url, stderr=False)
        assert out.stdout == b"42\n", out

        url = pods.runtime.Attach(
            pb.AttachRequest(container_id=cat_id, stdin=True, stdout=True), timeout=10
        ).url
        s = await ExecStreams.open(url, stdin=True, stderr=False)
        await s.write_stdin(b"through attach\n")
        seen = b""
        async with asyncio.timeout(10):
            while b"through attach\n" not in seen:
                chunk = await s.streams["stdout"].read()
                assert chunk, seen
                seen += chunk
        await s.client.close()

        url = pods.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id)).url
        async with await spdy(url) as client:
            deadline = time.monotonic() + 10
            for rid in range(100):
                reply, message = await forward(client, 8080, rid, b"GET / HTTP/1.0\r\n\r\n")
                if reply or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert reply.endswith(b"hello\n"), (reply, message)

    asyncio.run(asyncio.wait_for(streams(), 60))

    deadline = time.monotonic() + 10
    while "through attach" not in log_text(tmp_path / "logs" / "cat.log"):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    stats = pods.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert stats.memory.working_set_bytes.value > 0
    pstats = pods.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert {c.attributes.id for c in pstats.linux.containers} == {cid, cat_id}
    assert pstats.linux.network.default_interface.name == "eth0"
    teardown(pods, pod_id)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hostname", "two\nlines"),
        ("hostname", "nul\0byte"),
        ("hostname", "h" * 65),
        ("dns_config.searches", "example.com\nnameserver 1.2.3.4"),
        ("dns_config.options", "ndots:5\0"),
        ("dns_config.servers", "10.0.0.1 10.0.0.2"),
    ],
)
def test_hostname_and_dns_words_are_checked(pods: CriClient, field: str, value: str) -> None:
    cfg = bare_pod()
    if field == "hostname":
        cfg.hostname = value
    else:
        getattr(cfg.dns_config, field.split(".")[1]).append(value)
    with pytest.raises(grpc.RpcError) as e:
        run_bare(pods, cfg)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field.split(".")[0] in (e.value.details() or "")
    names = [p.metadata.name for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    assert cfg.metadata.name not in names


def test_image_identifiers_agree(pods: CriClient, pod_images: TestImages) -> None:
    """PullImageResponse.image_ref, Image.id, Container.image_id and ContainerStatus.image_id
    are one value for one image (CRI v1.36's rule)."""
    img = pod_images.busybox
    ref = pods.image.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=img.reference)), timeout=120
    ).image_ref
    assert ref == img.image_id
    image = pods.image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=img.reference)))
    assert image.image.id == ref
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg)
    ctr = bare_container(ref, ["top"])
    ctr.image.user_specified_image = img.reference
    cid = start_in(pods, pod_id, cfg, ctr)
    st = status(pods, cid)
    listed = pods.runtime.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid))
    ).containers
    assert st.image_id == ref and [c.image_id for c in listed] == [ref]
    assert st.image_ref == ref
    assert st.image.user_specified_image == img.reference
    teardown(pods, pod_id)


@pytest.mark.parametrize(
    "policy", [pb.SupplementalGroupsPolicy.Merge, pb.SupplementalGroupsPolicy.Strict]
)
def test_container_user_reports_the_process_identity(
    pods: CriClient, pod_images: TestImages, policy: int
) -> None:
    """ContainerStatus.user is what the process runs with: Merge adds the groups the
    image's /etc/group gives its user (crispy: 4321), Strict only the asked ones."""
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg)
    ctr = bare_container(pod_images.config.reference, ["sleep", "3600"])
    sc = ctr.linux.security_context
    sc.supplemental_groups.append(100)
    sc.supplemental_groups_policy = policy  # type: ignore[assignment]
    cid = start_in(pods, pod_id, cfg, ctr)
    uid, gid, *groups = map(int, sh(pods, cid, "id -u; id -g; id -G | tr ' ' '\\n'").split())
    user = status(pods, cid).user.linux
    assert (user.uid, user.gid) == (uid, gid) == (1234, 5678)
    assert sorted(set(user.supplemental_groups) | {gid}) == sorted(groups)
    merged = policy == pb.SupplementalGroupsPolicy.Merge
    assert (4321 in groups) is merged and 100 in groups
    teardown(pods, pod_id)


def test_default_sandbox_image_through_a_registry_mirror(
    tmp_path: Path, registry: Registry, test_images: TestImages, pod_net: TestNetwork
) -> None:
    """The default config's sandbox image, registry.k8s.io/pause:3.10, from a mirror that
    holds a FROM-scratch pause (as an air-gapped node has), runs a shared-PID pod whose
    name is 100 characters long."""
    pause = test_images.pause
    push_image(registry, "pause", "3.10", list(pause.layers), pause.config)
    hosts = tmp_path / "certs.d" / "registry.k8s.io"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        # upstream is a closed loopback port: a failing mirror must never reach the internet
        'server = "http://127.0.0.1:1"\n'
        f'[host."http://{registry.host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    config = (
        f'[cni]\nconf_dir = "{tmp_path / "net.d"}"\nbin_dirs = ["{CNI_BIN}"]\n'
        f'[registry]\nhosts_dir = "{tmp_path / "certs.d"}"\n'
    )
    d = Crispyd(tmp_path, config=config)
    (tmp_path / "net.d" / "10-test.conflist").write_text(pod_net.conflist())
    d.start()
    try:
        with d.client(timeout=120) as cri:
            cfg = bare_pod("p" * 100)
            pod_id = run_bare(cri, cfg)
            st, info = pod_status(cri, pod_id)
            assert st.state == pb.SANDBOX_READY and st.linux.namespaces.options.pid == pb.POD
            assert info["pid"] > 0
            images = cri.image.ListImages(pb.ListImagesRequest()).images
            assert any("registry.k8s.io/pause:3.10" in i.repo_tags for i in images)
            teardown(cri, pod_id)
    finally:
        d.stop()


def test_a_state_filter_no_object_is_in_lists_none(pods: CriClient, pod_images: TestImages) -> None:
    """CONTAINER_UNKNOWN (or a number the API doesn't know) is a filter too, not "no filter"."""
    cfg = bare_pod()
    pod_id = run_bare(pods, cfg)
    start_in(pods, pod_id, cfg, bare_container(pod_images.busybox.reference, ["top"]))
    everything = pods.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert everything
    for state in (pb.CONTAINER_UNKNOWN, 99):
        f = pb.ContainerFilter(state=pb.ContainerStateValue(state=state))  # type: ignore[arg-type]
        assert not pods.runtime.ListContainers(pb.ListContainersRequest(filter=f)).containers
    f2 = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=99))  # type: ignore[arg-type]
    assert not pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=f2)).items
    teardown(pods, pod_id)


def test_pid_target_joins_the_target_containers_namespace(
    pods: CriClient, pod_images: TestImages
) -> None:
    """kubelet's ephemeral container with a target (kubectl debug --target) in a pod that
    shares no PID namespace: it sees the target's processes, its PID 1 among them."""
    cfg = bare_pod()
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    pod_id = run_bare(pods, cfg)
    img = pod_images.busybox.reference
    target = start_in(pods, pod_id, cfg, bare_container(img, ["sleep", "3600"]))
    debug = bare_container(img, ["top"])
    opts = debug.linux.security_context.namespace_options
    opts.pid = pb.TARGET
    opts.target_id = target
    cid = start_in(pods, pod_id, cfg, debug)
    assert sh(pods, cid, "cat /proc/1/cmdline").split("\0")[:2] == ["sleep", "3600"]
    opts.target_id = "f" * 64
    debug.metadata.name = "debug-unknown-target"
    with pytest.raises(grpc.RpcError) as e:
        pods.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=debug, sandbox_config=cfg)
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "target_id" in (e.value.details() or "")
    teardown(pods, pod_id)
