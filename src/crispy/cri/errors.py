"""Domain error -> gRPC status, in one place, for every CRI call."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from crispy import errors

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


def unary(name: str, fn: Unary) -> Unary:
    """Wrap a unary handler: log it, and turn a domain error into its gRPC status."""

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.monotonic()
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(name, e, context)
        finally:
            log.debug("%s took %.1f ms", name, (time.monotonic() - start) * 1000)

    return handler


def streaming(name: str, fn: Streaming) -> Streaming:
    """Wrap a server-streaming handler the same way."""

    @functools.wraps(fn)
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(name, e, context)

    return handler
