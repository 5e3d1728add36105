"""A CRI client for any runtime (crispy, containerd, CRI-O): used by the CLI and the tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from crispy.api import pb, pb_grpc
from crispy.config import DEFAULT_ENDPOINT

ENDPOINT_ENV = "CONTAINER_RUNTIME_ENDPOINT"
IMAGE_ENDPOINT_ENV = "IMAGE_SERVICE_ENDPOINT"
MAX_MESSAGE = 16 * 1024 * 1024
# How long a runtime gets to answer Version before it is taken to be gone: a dead socket
# fails at once, this is for one that accepts and never answers.
REACH_TIMEOUT = 1.0
# The codes a call gets when its channel can't connect: UNAVAILABLE at once, or
# DEADLINE_EXCEEDED when connecting outlasts the call's deadline.
CONNECT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def normalise_endpoint(endpoint: str) -> str:
    """`/run/x.sock` -> `unix:///run/x.sock`; `unix://` and `tcp`-less forms pass through."""
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def resolve_endpoint(flag: str | None, env: str = ENDPOINT_ENV) -> str:
    return normalise_endpoint(flag or os.environ.get(env) or DEFAULT_ENDPOINT)


@dataclass(frozen=True)
class CallInfo:
    """What a grpc.RpcError does not say itself: which RPC failed, and over which channel."""

    method: str  # the RPC's own name, e.g. RunPodSandbox
    endpoint: str
    channel: grpc.Channel


_CALL_INFO = "_crispy_call"


class _NameCalls(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Tags every call's error object with its CallInfo.

    Whatever the kind of call (blocking, future, stream), the object grpc returns here is
    the one it raises when the call fails, so the tag is on the error the CLI catches.
    """

    def __init__(self, endpoint: str, channel: grpc.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel

    def _tag(self, details: grpc.ClientCallDetails, outcome: Any) -> Any:
        method = details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        if isinstance(outcome, grpc.RpcError):
            info = CallInfo(name.rsplit("/", 1)[-1], self.endpoint, self.channel)
            with contextlib.suppress(AttributeError):
                setattr(outcome, _CALL_INFO, info)
        return outcome

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return self._tag(details, continuation(details, request))

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return self._tag(details, continuation(details, request))

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return self._tag(details, continuation(details, requests))

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any
    ) -> Any:
        return self._tag(details, continuation(details, requests))


def call_info(e: grpc.RpcError) -> CallInfo | None:
    info = getattr(e, _CALL_INFO, None)
    return info if isinstance(info, CallInfo) else None


def unreachable(e: grpc.RpcError) -> bool:
    """The call failed because its channel can't connect, not because the runtime said no.

    UNAVAILABLE is also what a runtime answers for a registry it can't reach, so the code
    alone can't tell. A Version call can: a runtime that is there answers it (an image-only
    service with UNIMPLEMENTED, which is an answer too). A call rather than the channel's
    connectivity, whose polling thread dies noisily when the channel is closed.
    """
    if e.code() not in CONNECT_CODES:
        return False
    info = call_info(e)
    if info is None:
        return e.code() == grpc.StatusCode.UNAVAILABLE
    probe = pb_grpc.RuntimeServiceStub(info.channel).Version
    try:
        probe(pb.VersionRequest(), timeout=REACH_TIMEOUT)
    except grpc.RpcError as failed:
        return failed.code() in CONNECT_CODES
    return False


def describe_error(e: grpc.RpcError, fallback_endpoint: str = "") -> str:
    """The one wording of a failed call for every command.

    `cannot reach the runtime at ENDPOINT: ...` for a connection failure only; any other
    error is the runtime's (or the call's deadline): `RPC: CODE: message`.
    """
    info = call_info(e)
    code = e.code()
    details = e.details() or ""
    if unreachable(e):
        endpoint = info.endpoint if info else fallback_endpoint
        return f"cannot reach the runtime at {endpoint}: {details}"
    name = code.name if code is not None else "UNKNOWN"
    return f"{info.method}: {name}: {details}" if info else f"{name}: {details}"


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
        runtime = grpc.insecure_channel(self.endpoint, options=options)
        image = (
            runtime
            if self.image_endpoint == self.endpoint
            else grpc.insecure_channel(self.image_endpoint, options=options)
        )
        # Every call goes through _NameCalls, so any error can be worded by describe_error.
        self._channel = grpc.intercept_channel(runtime, _NameCalls(self.endpoint, runtime))
        self._image_channel = (
            self._channel
            if image is runtime
            else grpc.intercept_channel(image, _NameCalls(self.image_endpoint, image))
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
