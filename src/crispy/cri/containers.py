"""CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
ListContainers, UpdateContainerResources, ReopenContainerLog, ExecSync, GetContainerEvents."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from typing import Any

from crispy import events
from crispy.api import pb
from crispy.containers import image_mounts
from crispy.containers.execs import ContainerExecs
from crispy.containers.manager import ContainerManager
from crispy.containers.record import CREATED, EXITED, RUNNING, Container
from crispy.containers.stop_signal import parse_signal
from crispy.cri.sandbox import sandbox_status
from crispy.sandbox.pod import Pod

_STATE: dict[str, Any] = {
    CREATED: pb.CONTAINER_CREATED,
    RUNNING: pb.CONTAINER_RUNNING,
    EXITED: pb.CONTAINER_EXITED,
}
_STATE_NAME = {v: k for k, v in _STATE.items()}
_EVENT: dict[str, Any] = {
    events.CREATED: pb.CONTAINER_CREATED_EVENT,
    events.STARTED: pb.CONTAINER_STARTED_EVENT,
    events.STOPPED: pb.CONTAINER_STOPPED_EVENT,
    events.DELETED: pb.CONTAINER_DELETED_EVENT,
}


# signal number -> the CRI's Signal enum (the first name of each number: SIGABRT, not SIGIOT)
_SIGNALS: dict[int, Any] = {}
for _name, _value in pb.Signal.items():
    if _value:
        _SIGNALS.setdefault(parse_signal(_name), _value)


def container_state(c: Container) -> Any:
    return _STATE.get(c.state, pb.CONTAINER_UNKNOWN)


def container_message(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.pod_id,
        metadata=c.config.metadata,
        image=c.config.image,
        image_ref=c.image_ref,
        image_id=c.image_ref,
        state=container_state(c),
        created_at=c.created_at,
        labels=c.config.labels,
        annotations=c.config.annotations,
    )


def _mounts(c: Container) -> list[pb.Mount]:
    image_ids = image_mounts.image_ids(c.info)
    out = []
    for i, m in enumerate(c.config.mounts):
        mount = pb.Mount(
            container_path=m.container_path,
            host_path=m.host_path,
            readonly=m.readonly,
            selinux_relabel=m.selinux_relabel,
            propagation=m.propagation,
            recursive_read_only=m.recursive_read_only,
        )
        if m.HasField("image"):
            # The image it mounts by ID (what kubelet reports as the volume's image ref),
            # with the reference as asked kept in user_specified_image.
            mount.image.CopyFrom(m.image)
            mount.image.image = image_ids.get(i, m.image.image)
            mount.image.user_specified_image = m.image.user_specified_image or m.image.image
            mount.image_sub_path = m.image_sub_path
        out.append(mount)
    return out


def container_status(c: Container, spec: dict[str, Any] | None) -> pb.ContainerStatus:
    status = pb.ContainerStatus(
        id=c.id,
        metadata=c.config.metadata,
        state=container_state(c),
        created_at=c.created_at,
        started_at=c.started_at,
        finished_at=c.finished_at,
        exit_code=c.exit_code,
        image=c.config.image,
        image_ref=c.image_ref,
        image_id=c.image_ref,
        reason=c.reason,
        message=c.message,
        labels=c.config.labels,
        annotations=c.config.annotations,
        mounts=_mounts(c),
        log_path=c.log_path,
        resources=pb.ContainerResources(linux=c.config.linux.resources),
        stop_signal=_SIGNALS.get(c.info.stop_signal or signal.SIGTERM, pb.SIGTERM),
    )
    user = (spec or {}).get("process", {}).get("user")
    if user:
        status.user.linux.uid = int(user.get("uid", 0))
        status.user.linux.gid = int(user.get("gid", 0))
        status.user.linux.supplemental_groups.extend(int(g) for g in user.get("additionalGids", []))
    return status


class ContainerCalls:
    SERVICE = "RuntimeService"

    def __init__(self, containers: ContainerManager, execs: ContainerExecs) -> None:
        self.containers = containers
        self.execs = execs
        containers.sandboxes.events.render = self._render

    def _render(self, pod_id: str, pod: Pod | None) -> tuple[Any, int]:
        """An event's statuses, as they are when it happens."""
        pod = pod or self.containers.sandboxes.pods.get(pod_id)
        if pod is None:
            return None, 0
        status = sandbox_status(pod)
        ctrs = [container_status(c, None) for c in self.containers.of_pod(pod_id)]
        return (status, ctrs), status.ByteSize() + sum(c.ByteSize() for c in ctrs)

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Any
    ) -> pb.CreateContainerResponse:
        cid = await self.containers.create(request.pod_sandbox_id, request.config)
        return pb.CreateContainerResponse(container_id=cid)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Any
    ) -> pb.StartContainerResponse:
        await self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Any
    ) -> pb.StopContainerResponse:
        await self.containers.stop(request.container_id, request.timeout)
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Any
    ) -> pb.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Any
    ) -> pb.ContainerStatusResponse:
        c = self.containers.status(request.container_id)
        spec = self.containers.spec(c)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "sandboxID": c.pod_id,
                    "pid": c.pid,
                    "runtimeHandler": c.info.handler,
                    "snapshotKey": c.info.snapshot,
                    "bundle": c.bundle,
                    "runtimeSpec": spec,
                }
            )
        return pb.ContainerStatusResponse(status=container_status(c, spec), info=info)

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Any
    ) -> pb.ListContainersResponse:
        f = request.filter
        # A state no container is in (CONTAINER_UNKNOWN, an unknown number) matches none.
        state = _STATE_NAME.get(f.state.state, "unknown") if f.HasField("state") else None
        found = self.containers.select(f.id, state, f.pod_sandbox_id, dict(f.label_selector))
        return pb.ListContainersResponse(containers=[container_message(c) for c in found])

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Any
    ) -> pb.UpdateContainerResourcesResponse:
        await self.containers.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Any
    ) -> pb.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Any) -> pb.ExecSyncResponse:
        code, out, err = await self.execs.exec_sync(
            request.container_id, list(request.cmd), int(request.timeout)
        )
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Any
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        with self.containers.sandboxes.events.subscribe() as sub:
            # The headers say "subscribed": a client that waits for them, then lists,
            # misses no change (crispy/events.py).
            await context.send_initial_metadata(())
            async for ev in sub:
                resp = pb.ContainerEventResponse(
                    container_id=ev.container_id,
                    container_event_type=_EVENT[ev.kind],
                    created_at=ev.at,
                )
                if ev.payload is not None:
                    status, ctrs = ev.payload
                    resp.pod_sandbox_status.CopyFrom(status)
                    resp.containers_statuses.extend(ctrs)
                yield resp
