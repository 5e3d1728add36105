"""Exec, Attach and PortForward: a single-use URL on the streaming server.

The request is checked here (so kubelet gets a gRPC error rather than a failing stream):
the container must be running (the pod ready, for PortForward), at least one of stdin,
stdout and stderr asked for, and a TTY has no separate stderr (remotecommand.Options).
"""

from __future__ import annotations

from typing import Any

from crispy import errors
from crispy.api import pb
from crispy.containers.execs import ContainerExecs
from crispy.sandbox.manager import SandboxManager
from crispy.sandbox.pod import READY
from crispy.streaming import portforward, remotecommand
from crispy.streaming.server import StreamingServer


class StreamingCalls:
    SERVICE = "RuntimeService"

    def __init__(
        self, sandboxes: SandboxManager, execs: ContainerExecs, server: StreamingServer
    ) -> None:
        self.sandboxes = sandboxes
        self.execs = execs
        self.server = server

    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        c = self.execs.check_streamable(request.container_id)
        if not request.cmd:
            raise errors.InvalidArgument("cmd must not be empty")
        options = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        target = remotecommand.ExecTarget(c.id, tuple(request.cmd), options)
        token = self.server.register(remotecommand.EXEC, target)
        return pb.ExecResponse(url=self.server.url(remotecommand.EXEC, token))

    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        c = self.execs.check_streamable(request.container_id)
        options = remotecommand.Options(request.stdin, request.stdout, request.stderr, request.tty)
        target = remotecommand.AttachTarget(c.id, options)
        token = self.server.register(remotecommand.ATTACH, target)
        return pb.AttachResponse(url=self.server.url(remotecommand.ATTACH, token))

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Any
    ) -> pb.PortForwardResponse:
        pod = self.sandboxes.get(request.pod_sandbox_id)
        if pod.state != READY:
            raise errors.FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        target = portforward.PortForwardTarget(pod.id, pod.info.netns)
        token = self.server.register(portforward.KIND, target)
        return pb.PortForwardResponse(url=self.server.url(portforward.KIND, token))
