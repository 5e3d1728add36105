"""Size limits on what pods and containers keep (crispy.cri.limits), on the real daemon.

An outside run made four pods with 10 MiB of labels each: every ListPodSandbox then failed
RESOURCE_EXHAUSTED for every client. Now such a pod is refused, naming the limit, and the
largest pods the limits allow still list together.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.cri import limits
from support.containers import container_config, wait_exit
from support.pods import pod_config, run_pod
from support.registry_fixtures import TestImages

pytestmark = pytest.mark.root

KiB = 1024


def refused(call: object, *args: object) -> str:
    with pytest.raises(grpc.RpcError) as e:
        call(*args)  # type: ignore[operator]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    return e.value.details() or ""


def kubelet_labels(name: str) -> dict[str, str]:
    """The labels kubelet puts on every pod: its name may be a 253-character subdomain."""
    return {
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": "default",
        "io.kubernetes.pod.uid": str(uuid.uuid4()),
        "app.kubernetes.io/name": "web",
    }


def test_megabytes_of_labels_are_refused_and_lists_keep_working(pods: CriClient) -> None:
    names = []
    for _ in range(4):
        cfg = pod_config(labels={f"k{i}": "v" * 200 for i in range(50_000)})  # ~10 MiB
        details = refused(pods.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg))
        assert "labels" in details and str(limits.LABELS_TOTAL) in details
        names.append(cfg.metadata.name)
    ok = run_pod(pods, pod_config())
    listed = pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert ok in {p.id for p in listed} and not {p.metadata.name for p in listed} & set(names)


def test_the_largest_allowed_pods_list_together(pods: CriClient) -> None:
    name = "n" * 253
    annotations = {f"a{i}": "x" * (16 * KiB - 8) for i in range(15)}  # just under 256 KiB
    ids = []
    for _ in range(4):
        cfg = pod_config(name, labels=kubelet_labels(name), annotations=annotations)
        cfg.metadata.uid = str(uuid.uuid4())
        ids.append(run_pod(pods, cfg))
    listed = pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert set(ids) <= {p.id for p in listed}
    assert all(p.annotations == annotations for p in listed if p.id in ids)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.annotations.update({"big": "x" * (256 * KiB)}), "annotations"),
        (lambda c: c.labels.update({"k" * 318: "v"}), "labels"),
        (lambda c: c.labels.update({"k": "v" * 254}), "labels"),
        (lambda c: setattr(c.metadata, "name", "n" * 254), "metadata.name"),
        (lambda c: setattr(c.metadata, "namespace", "n" * 254), "metadata.namespace"),
        (lambda c: setattr(c.metadata, "uid", "u" * 254), "metadata.uid"),
    ],
)
def test_pod_limits_name_the_field(pods: CriClient, change: object, field: str) -> None:
    cfg = pod_config()
    change(cfg)  # type: ignore[operator]
    details = refused(pods.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg))
    assert details.startswith(field), details
    names = [p.metadata.name for p in pods.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    assert cfg.metadata.name not in names


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.annotations.update({"big": "x" * (256 * KiB)}), "annotations"),
        (lambda c: c.args.append("a" * (128 * KiB)), "args"),
        (
            lambda c: c.envs.extend(
                pb.KeyValue(key=f"E{i}", value="v" * 100_000) for i in range(21)
            ),
            "command, args and envs",
        ),
        (
            lambda c: c.linux.resources.unified.update({"memory.high": "1" * (64 * KiB)}),
            "linux.resources.unified",
        ),
    ],
)
def test_container_limits_name_the_field(
    pods: CriClient, pod_images: TestImages, change: object, field: str
) -> None:
    cfg = pod_config()
    pod_id = run_pod(pods, cfg)
    ctr = container_config(pod_images.busybox.reference, command=["true"])
    change(ctr)  # type: ignore[operator]
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=cfg)
    details = refused(pods.runtime.CreateContainer, req)
    assert details.startswith(field), details
    listed = pods.runtime.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
    )
    assert not listed.containers


def test_a_container_at_the_limits_runs(pods: CriClient, pod_images: TestImages) -> None:
    """1.9 MiB of environment, as much as execve takes, still starts."""
    cfg = pod_config()
    pod_id = run_pod(pods, cfg)
    env = {f"E{i}": "v" * 100_000 for i in range(19)}
    ctr = container_config(pod_images.busybox.reference, command=["true"], env=env)
    cid = pods.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=ctr, sandbox_config=cfg)
    ).container_id
    pods.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    assert wait_exit(pods, cid).exit_code == 0
