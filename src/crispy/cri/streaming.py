"""PortForward: a single-use URL on the streaming server (Exec and Attach are not done yet)."""

from __future__ import annotations

from typing import Any

from crispy import errors
from crispy.cri.api import pb
from crispy.sandbox.manager import SandboxManager
from crispy.sandbox.pod import READY
from crispy.streaming import portforward
from crispy.streaming.server import StreamingServer


class StreamingCalls:
    SERVICE = "RuntimeService"

    def __init__(self, sandboxes: SandboxManager, server: StreamingServer) -> None:
        self.sandboxes = sandboxes
        self.server = server

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Any
    ) -> pb.PortForwardResponse:
        pod = self.sandboxes.get(request.pod_sandbox_id)
        if pod.state != READY:
            raise errors.FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        target = portforward.PortForwardTarget(pod.id, pod.info.get("netns", "") or "")
        token = self.server.register(portforward.KIND, target)
        return pb.PortForwardResponse(url=self.server.url(portforward.KIND, token))
