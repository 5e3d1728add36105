"""Assembles RuntimeService and ImageService from per-topic call groups.

Each `cri/` module holds one group of calls: a class whose `SERVICE` names the
service and whose async methods are named after the RPCs. Any RPC no group
implements answers UNIMPLEMENTED with its name, so a client learns exactly
which call crispy does not do yet. A group's public async method whose name starts
upper-case is meant as an RPC: one named like none of its service's (a typo, which
would otherwise leave the RPC UNIMPLEMENTED without a word) stops the wiring with a
WiringError, as does a SERVICE that names no CRI service. Requests that create what
crispy keeps pass the size limits of `limits.py` before their call runs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from crispy.api import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from crispy.cri import interceptor, limits


class WiringError(RuntimeError):
    """A call group does not fit the services it is wired to; a bug in crispy."""


def rpc_method_names(group: Any) -> list[str]:
    """A call group's public async methods named CamelCase: the RPCs it means to serve."""
    return sorted(
        name
        for name, fn in inspect.getmembers_static(type(group))
        if name[:1].isupper()
        and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))
    )


def check_group(service: ServiceDescriptor, group: Any) -> None:
    """Refuse a group of `service` with a CamelCase async method that is none of its RPCs."""
    rpcs = [m.name for m in service.methods]
    for name in rpc_method_names(group):
        if name not in rpcs:
            near = difflib.get_close_matches(name, rpcs, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise WiringError(
                f"{type(group).__name__}.{name}: {service.name} has no RPC {name}{hint}; "
                "a method that is no RPC takes a lower-case or _private name"
            )


def _message_class(descriptor: Any) -> Any:
    return getattr(pb, descriptor.name)


def _unimplemented(service: str, method: MethodDescriptor) -> Any:
    message = f"{service}.{method.name} is not implemented by crispy yet"

    if method.server_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return unary


def generic_handler(service: ServiceDescriptor, groups: Iterable[Any]) -> grpc.GenericRpcHandler:
    impl: dict[str, Any] = {}
    for group in groups:
        if service.name != group.SERVICE:
            continue
        check_group(service, group)
        for method in service.methods:
            fn = getattr(group, method.name, None)
            if fn is not None:
                if method.name in impl:
                    raise WiringError(f"{service.name}.{method.name} implemented twice")
                impl[method.name] = fn
    handlers = {}
    for method in service.methods:
        req = _message_class(method.input_type)
        resp = _message_class(method.output_type)
        if method.client_streaming:
            raise RuntimeError(f"client streaming is not part of the CRI: {method.full_name}")
        fn = impl.get(method.name)
        if method.server_streaming:
            behaviour = (
                interceptor.streaming(method.name, fn)
                if fn
                else _unimplemented(service.name, method)
            )
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
        else:
            behaviour = (
                interceptor.unary(method.name, limits.checked(method.name, fn), service.full_name)
                if fn
                else _unimplemented(service.name, method)
            )
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def cri_handlers(groups: Iterable[Any]) -> list[grpc.GenericRpcHandler]:
    groups = list(groups)
    services = (RUNTIME_SERVICE.name, IMAGE_SERVICE.name)
    for group in groups:
        name = getattr(group, "SERVICE", None)
        if name not in services:
            # Matching neither, it would be skipped and all its RPCs left UNIMPLEMENTED.
            raise WiringError(
                f"{type(group).__name__}.SERVICE is {name!r}, not one of {', '.join(services)}"
            )
    return [generic_handler(RUNTIME_SERVICE, groups), generic_handler(IMAGE_SERVICE, groups)]
