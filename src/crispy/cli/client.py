"""A CRI client for any runtime (crispy, containerd, CRI-O): used by the CLI and the tests."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import grpc

from crispy.config import DEFAULT_ENDPOINT
from crispy.cri.api import pb_grpc

ENDPOINT_ENV = "CONTAINER_RUNTIME_ENDPOINT"
IMAGE_ENDPOINT_ENV = "IMAGE_SERVICE_ENDPOINT"
MAX_MESSAGE = 16 * 1024 * 1024


def normalise_endpoint(endpoint: str) -> str:
    """`/run/x.sock` -> `unix:///run/x.sock`; `unix://` and `tcp`-less forms pass through."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def resolve_endpoint(flag: str | None, env: str = ENDPOINT_ENV) -> str:
    return normalise_endpoint(flag or os.environ.get(env) or DEFAULT_ENDPOINT)


class CriClient:
    """Synchronous RuntimeService and ImageService stubs on one or two channels."""

    def __init__(
        self,
        endpoint: str | None = None,
        image_endpoint: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.image_endpoint = (
            normalise_endpoint(image_endpoint)
            if image_endpoint
            else resolve_endpoint(None, IMAGE_ENDPOINT_ENV)
            if os.environ.get(IMAGE_ENDPOINT_ENV)
            else self.endpoint
        )
        self.timeout = timeout
        options = [
            # an ExecSync answer holds up to 16 MiB of stdout plus 16 MiB of stderr
            ("grpc.max_receive_message_length", 2 * MAX_MESSAGE + (64 << 10)),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        self._channel = grpc.insecure_channel(self.endpoint, options=options)
        self._image_channel = (
            self._channel
            if self.image_endpoint == self.endpoint
            else grpc.insecure_channel(self.image_endpoint, options=options)
        )
        self.runtime = pb_grpc.RuntimeServiceStub(self._channel)
        self.image = pb_grpc.ImageServiceStub(self._image_channel)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the runtime's socket accepts a connection (grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout or self.timeout)

    def close(self) -> None:
        self._channel.close()
        if self._image_channel is not self._channel:
            self._image_channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def cancellable(method: Any, request: Any, timeout: float | None = None) -> Any:
    """A unary call made as a future, so Ctrl-C cancels it in the runtime instead of leaving
    it to run out (a RunPodSandbox may be pulling the pause image)."""
    call = method.future(request, timeout=timeout)
    try:
        return call.result()
    except KeyboardInterrupt:
        call.cancel()
        raise
