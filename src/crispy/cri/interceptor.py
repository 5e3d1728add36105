"""Domain error -> gRPC status, in one place, for every CRI call."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from crispy import errors, metrics
from crispy.api import IMAGE_SERVICE, RUNTIME_SERVICE

log = logging.getLogger("crispy.cri")

STATUS_OF: dict[type[errors.CrispyError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code(exc: errors.CrispyError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.UNKNOWN


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


async def _abort(name: str, e: Exception, context: grpc.aio.ServicerContext) -> None:
    """Answer the call with `e`'s gRPC status (abort raises, ending the handler)."""
    if isinstance(e, errors.CrispyError):
        log.info("%s failed: %s", name, e)
        await context.abort(status_code(e), str(e))
    log.exception("%s: unexpected error", name, exc_info=e)
    await context.abort(grpc.StatusCode.UNKNOWN, f"{name}: {type(e).__name__}: {e}")


# A call group's SERVICE ("RuntimeService") -> the service's full gRPC name, for metrics.
FULL_SERVICE_NAME = {d.name: d.full_name for d in (RUNTIME_SERVICE, IMAGE_SERVICE)}


def _service_of(fn: Any) -> str:
    """The gRPC service of a handler that is a method of a call group with SERVICE."""
    name = getattr(getattr(fn, "__self__", None), "SERVICE", None)
    return FULL_SERVICE_NAME.get(name, name) if isinstance(name, str) else "unknown"


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """How the call ended: the status set by abort or set_code, else OK."""
    code = getattr(context, "code", None)
    status = code() if callable(code) else None
    return status.name if isinstance(status, grpc.StatusCode) else grpc.StatusCode.OK.name


def _failure_code(e: Exception) -> str:
    """The status `_abort` answers `e` with."""
    code = status_code(e) if isinstance(e, errors.CrispyError) else grpc.StatusCode.UNKNOWN
    return code.name


# Each wrapper records the call (crispy.metrics) before its status leaves: a client that
# got an answer and then scrapes /metrics sees its call counted.


def unary(name: str, fn: Unary, service: str | None = None) -> Unary:
    """Wrap a unary handler: log it, count and time it (crispy.metrics), and turn a
    domain error into its gRPC status. `service` labels the metrics; by default the
    SERVICE of the call group `fn` is a method of."""
    svc = service or _service_of(fn)

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.monotonic()
        try:
            async with _observed(svc, name, context):
                return await fn(request, context)
        finally:
            log.debug("%s took %.1f ms", name, (time.monotonic() - start) * 1000)

    return handler


def streaming(name: str, fn: Streaming, service: str | None = None) -> Streaming:
    """Wrap a server-streaming handler the same way; its time runs to the last message."""
    svc = service or _service_of(fn)

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _observed(svc, name, context):
            async for item in fn(request, context):
                yield item

    return handler


@contextlib.asynccontextmanager
async def _observed(svc: str, name: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Record the call's outcome and time; turn a domain error into its gRPC status."""
    start = time.monotonic()

    def record(code: str) -> None:
        metrics.record_rpc(svc, name, code, time.monotonic() - start)

    try:
        yield
    except grpc.aio.AbortError:
        record(_code_name(context))
        raise
    except (asyncio.CancelledError, GeneratorExit):
        record("CANCELLED")
        raise
    except Exception as e:
        record(_failure_code(e))
        await _abort(name, e, context)
    else:
        record(_code_name(context))
