"""RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox."""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf.json_format import MessageToDict

from crispy.api import pb
from crispy.sandbox.manager import SandboxManager
from crispy.sandbox.pod import NOTREADY, READY, Pod
from crispy.store import jsonrecord

_STATE = {READY: pb.SANDBOX_READY, NOTREADY: pb.SANDBOX_NOTREADY}
_STATE_NAME = {pb.SANDBOX_READY: READY, pb.SANDBOX_NOTREADY: NOTREADY}


def pod_state(pod: Pod) -> Any:
    return _STATE.get(pod.state, pb.SANDBOX_NOTREADY)


def pod_message(pod: Pod) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pod.id,
        metadata=pod.config.metadata,
        state=pod_state(pod),
        created_at=pod.created_at,
        labels=pod.config.labels,
        annotations=pod.config.annotations,
        runtime_handler=requested_handler(pod),
    )


def requested_handler(pod: Pod) -> str:
    """The handler as RunPodSandbox named it ("" for the default), as containerd answers;
    the verbose info has the one that runs it. Pods of an older crispy: the resolved one."""
    requested = pod.info.requested_handler
    return pod.handler if requested is None else requested


def verbose_info(pod: Pod) -> dict[str, str]:
    info = pod.info
    doc: dict[str, Any] = {
        "pid": info.infra.pid if info.infra else 0,
        "netns": info.netns,
        "namespaces": {"net": info.netns, "ipc": info.ipcns, "uts": info.utsns},
        "shimPid": info.shim_pid,
        "cgroupParent": info.cgroup_parent,
        "cgroupPath": info.cgroup_path,
        "shm": info.shm,
        "runtimeHandler": pod.handler,
        "infraContainer": jsonrecord.dump(info.infra) if info.infra else None,
        "config": MessageToDict(pod.config),
    }
    return {"info": json.dumps(doc)}


def sandbox_status(pod: Pod) -> pb.PodSandboxStatus:
    ips = pod.ips
    opts = pod.config.linux.security_context.namespace_options
    return pb.PodSandboxStatus(
        id=pod.id,
        metadata=pod.config.metadata,
        state=pod_state(pod),
        created_at=pod.created_at,
        network=pb.PodSandboxNetworkStatus(
            ip=ips[0] if ips else "",
            additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]],
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=pb.NamespaceOption(network=opts.network, pid=opts.pid, ipc=opts.ipc)
            )
        ),
        labels=pod.config.labels,
        annotations=pod.config.annotations,
        runtime_handler=requested_handler(pod),
    )


class SandboxCalls:
    SERVICE = "RuntimeService"

    def __init__(self, sandboxes: SandboxManager) -> None:
        self.sandboxes = sandboxes

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Any
    ) -> pb.RunPodSandboxResponse:
        pod_id = await self.sandboxes.run(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Any
    ) -> pb.StopPodSandboxResponse:
        await self.sandboxes.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Any
    ) -> pb.RemovePodSandboxResponse:
        await self.sandboxes.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Any
    ) -> pb.PodSandboxStatusResponse:
        pod = self.sandboxes.status(request.pod_sandbox_id)
        status = sandbox_status(pod)
        return pb.PodSandboxStatusResponse(
            status=status,
            info=verbose_info(pod) if request.verbose else {},
            timestamp=time.time_ns(),
        )

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Any
    ) -> pb.ListPodSandboxResponse:
        f = request.filter
        state = None
        if f.HasField("state"):
            state = _STATE_NAME.get(f.state.state, "unknown")  # a state no pod is in: none
        pods = self.sandboxes.list(f.id, state, dict(f.label_selector))
        return pb.ListPodSandboxResponse(items=[pod_message(p) for p in pods])
