"""Size limits on what a CRI request asks crispy to keep, checked before any call runs.

Everything a pod or container is created with is kept for its life and sent back in every
List answer, so one object made of megabytes of labels would make every ListPodSandbox or
ListContainers answer exceed the gRPC message limit, for every client. The limits follow
Kubernetes' own (a request over them could not have come from a valid pod) and the
kernel's, with room for what kubelet itself adds:

- annotations: 256 KiB in all, keys and values (the API server's limit for a pod);
- labels: 64 KiB in all; a key at most 317 characters (a 253-character DNS prefix, "/",
  a 63-character name), a value at most 253: the API server allows 63 for a label, but
  kubelet's own CRI labels carry the pod's name (a DNS subdomain, up to 253);
- metadata name, namespace and uid at most 253 characters (DNS subdomains);
- command, args and envs: each string at most 128 KiB and 2 MiB in all (the kernel's
  MAX_ARG_STRLEN, and ARG_MAX under the default 8 MiB stack: execve would refuse more);
- the resources' `unified` map 64 KiB in all.

A request over a limit is an InvalidArgument that names the field and the limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from crispy import errors
from crispy.api import pb

KiB = 1024
ANNOTATIONS_TOTAL = 256 * KiB
LABELS_TOTAL = 64 * KiB
LABEL_KEY_MAX = 317
LABEL_VALUE_MAX = 253
NAME_MAX = 253
ARG_STRING_MAX = 128 * KiB
ARGV_ENV_TOTAL = 2048 * KiB
UNIFIED_TOTAL = 64 * KiB


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _map_total(values: Mapping[str, str], what: str, limit: int) -> None:
    total = sum(_size(k) + _size(v) for k, v in values.items())
    if total > limit:
        raise errors.InvalidArgument(
            f"{what}: {total} bytes of keys and values, over the limit of {limit}"
        )


def check_labels(labels: Mapping[str, str], what: str) -> None:
    _map_total(labels, what, LABELS_TOTAL)
    for key, value in labels.items():
        if len(key) > LABEL_KEY_MAX:
            raise errors.InvalidArgument(
                f"{what}: key {key[:40]!r}... is {len(key)} characters, over {LABEL_KEY_MAX}"
            )
        if len(value) > LABEL_VALUE_MAX:
            raise errors.InvalidArgument(
                f"{what}[{key!r}]: value of {len(value)} characters, over {LABEL_VALUE_MAX}"
            )


def check_annotations(annotations: Mapping[str, str], what: str) -> None:
    _map_total(annotations, what, ANNOTATIONS_TOTAL)


def check_names(what: str, **names: str) -> None:
    for field, value in names.items():
        if len(value) > NAME_MAX:
            raise errors.InvalidArgument(
                f"{what}.{field} is {len(value)} characters, over the limit of {NAME_MAX}"
            )


def _check_argv_env(strings: Iterable[tuple[str, str]]) -> None:
    total = 0
    for what, text in strings:
        size = _size(text) + 1  # and its NUL, as the kernel counts
        if size > ARG_STRING_MAX:
            raise errors.InvalidArgument(
                f"{what}: a string of {size} bytes, over the limit of {ARG_STRING_MAX}"
            )
        total += size
    if total > ARGV_ENV_TOTAL:
        raise errors.InvalidArgument(
            f"command, args and envs: {total} bytes in all, over the limit of {ARGV_ENV_TOTAL}"
        )


def check_pod_config(config: pb.PodSandboxConfig) -> None:
    m = config.metadata
    check_names("metadata", name=m.name, namespace=m.namespace, uid=m.uid)
    check_labels(config.labels, "labels")
    check_annotations(config.annotations, "annotations")


def check_container_config(config: pb.ContainerConfig) -> None:
    check_names("metadata", name=config.metadata.name)
    check_labels(config.labels, "labels")
    check_annotations(config.annotations, "annotations")
    strings = [("command", s) for s in config.command] + [("args", s) for s in config.args]
    strings += [(f"envs[{kv.key[:40]!r}]", f"{kv.key}={kv.value}") for kv in config.envs]
    _check_argv_env(strings)
    _map_total(config.linux.resources.unified, "linux.resources.unified", UNIFIED_TOTAL)


def _run_pod(request: pb.RunPodSandboxRequest) -> None:
    check_pod_config(request.config)


def _create_container(request: pb.CreateContainerRequest) -> None:
    check_container_config(request.config)


def _update_resources(request: pb.UpdateContainerResourcesRequest) -> None:
    _map_total(request.linux.unified, "linux.unified", UNIFIED_TOTAL)


# RPC name -> the check of its request, run before the call's handler.
REQUEST_CHECKS: dict[str, Callable[[Any], None]] = {
    "RunPodSandbox": _run_pod,
    "CreateContainer": _create_container,
    "UpdateContainerResources": _update_resources,
}

Handler = Callable[[Any, Any], Awaitable[Any]]


def checked(name: str, fn: Handler) -> Handler:
    """`fn`, after the size checks of RPC `name`'s request (if it has any)."""
    check = REQUEST_CHECKS.get(name)
    if check is None:
        return fn

    async def call(request: Any, context: Any) -> Any:
        check(request)
        return await fn(request, context)

    return call
