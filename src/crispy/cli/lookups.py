"""Finding the pods and containers a command names: listing them, resolving an ID or unique
prefix to one ID (IDLookupError when it names none or several), a container's status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeVar

from crispy.api import pb
from crispy.cli.client import CriClient

Listed = TypeVar("Listed", pb.PodSandbox, pb.Container)


class IDLookupError(Exception):
    """An ID or prefix that names no pod or container, or several."""


def list_pods(
    client: CriClient,
    state: pb.PodSandboxState.ValueType | None = None,
    labels: dict[str, str] | None = None,
) -> list[pb.PodSandbox]:
    flt = pb.PodSandboxFilter(label_selector=labels or {})
    if state is not None:
        flt.state.state = state
    resp = client.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=flt), timeout=client.timeout
    )
    return _honoured(list(resp.items), state, labels)


def list_containers(
    client: CriClient,
    state: pb.ContainerState.ValueType | None = None,
    pod_id: str = "",
    labels: dict[str, str] | None = None,
) -> list[pb.Container]:
    flt = pb.ContainerFilter(pod_sandbox_id=pod_id, label_selector=labels or {})
    if state is not None:
        flt.state.state = state
    resp = client.runtime.ListContainers(
        pb.ListContainersRequest(filter=flt), timeout=client.timeout
    )
    items = [c for c in resp.containers if not pod_id or c.pod_sandbox_id == pod_id]
    return _honoured(items, state, labels)


def _honoured(
    items: list[Listed], state: int | None, labels: dict[str, str] | None
) -> list[Listed]:
    """`items` filtered here too: the runtime may not have honoured every field."""
    if state is not None:
        items = [i for i in items if i.state == state]
    if labels:
        items = [i for i in items if all(i.labels.get(k) == v for k, v in labels.items())]
    return items


def newest(items: list[Listed], latest: bool = False, last: int = 0) -> list[Listed]:
    """Newest first, cut as ps's and pods' --latest (one) and --last N ask."""
    items = sorted(items, key=lambda i: i.created_at, reverse=True)
    if last > 0:
        return items[:last]
    return items[:1] if latest else items


def resolve_id(prefix: str, ids: Sequence[str], kind: str = "pod sandbox") -> str:
    """The one ID of `ids` that is `prefix` or starts with it; IDLookupError naming `kind`."""
    if prefix in ids:
        return prefix
    matches = [i for i in ids if prefix and i.startswith(prefix)]
    if not matches:
        raise IDLookupError(f"{kind} {prefix} not found")
    if len(matches) > 1:
        raise IDLookupError(
            f"{kind} ID {prefix} is ambiguous: it matches {', '.join(sorted(matches))}"
        )
    return matches[0]


def resolve_all(prefixes: Sequence[str], known: Sequence[str], kind: str) -> tuple[list[str], bool]:
    """Every resolvable ID once, in order, and whether any failed (each failure printed)."""
    resolved: list[str] = []
    failed = False
    for prefix in prefixes:
        try:
            found = resolve_id(prefix, known, kind)
        except IDLookupError as e:
            print(f"crispy: {e}", file=sys.stderr)
            failed = True
            continue
        if found not in resolved:
            resolved.append(found)
    return resolved, failed


def resolve_pod(client: CriClient, prefix: str) -> str:
    return resolve_id(prefix, [p.id for p in list_pods(client)], "pod sandbox")


def resolve_pods(client: CriClient, prefixes: Sequence[str]) -> tuple[list[str], bool]:
    """Every resolvable pod ID once, in order, and whether any failed (each printed)."""
    return resolve_all(prefixes, [p.id for p in list_pods(client)], "pod sandbox")


def resolve_container(client: CriClient, prefix: str) -> str:
    return resolve_id(prefix, [c.id for c in list_containers(client)], "container")


def resolve_containers(client: CriClient, prefixes: Sequence[str]) -> tuple[list[str], bool]:
    """Every resolvable container ID once, in order, and whether any failed (each printed)."""
    return resolve_all(prefixes, [c.id for c in list_containers(client)], "container")


def container_status(
    client: CriClient, cid: str, verbose: bool = False
) -> pb.ContainerStatusResponse:
    req = pb.ContainerStatusRequest(container_id=cid, verbose=verbose)
    resp: pb.ContainerStatusResponse = client.runtime.ContainerStatus(req, timeout=client.timeout)
    return resp
