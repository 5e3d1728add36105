"""crispy's own calls beside the CRI, on the same socket: service `crispy.v1.Images`.

The CRI has no way to show pull progress or to move images without a registry,
so crispy adds a few JSON-over-gRPC methods for its command line. Other CRI
clients never see them; `crispy` falls back to plain CRI where they are missing.

Each group of these calls names its methods in `handlers()`. Wiring them refuses a
method two groups claim, and, as for the CRI's groups (cri/service.py), a public
CamelCase async method that is none of the group's calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc

from crispy.cri import interceptor
from crispy.cri.service import WiringError, rpc_method_names

SERVICE = "crispy.v1.Images"

UnaryJSON = Callable[[dict[str, Any], grpc.aio.ServicerContext], Awaitable[dict[str, Any]]]
StreamJSON = Callable[[dict[str, Any], grpc.aio.ServicerContext], AsyncIterator[dict[str, Any]]]


class ExtensionCalls(Protocol):
    def handlers(self) -> dict[str, grpc.RpcMethodHandler]: ...


def _decode(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ValueError("request is not a JSON object")
    return doc


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def unary_json(name: str, fn: UnaryJSON) -> grpc.RpcMethodHandler:
    async def call(doc: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
        return await fn(doc, context)

    return grpc.unary_unary_rpc_method_handler(
        interceptor.unary(name, call, SERVICE),
        request_deserializer=_decode,
        response_serializer=_encode,
    )


def stream_json(name: str, fn: StreamJSON) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(
        interceptor.streaming(name, fn, SERVICE),
        request_deserializer=_decode,
        response_serializer=_encode,
    )


def extension_handler(groups: Iterable[ExtensionCalls]) -> grpc.GenericRpcHandler:
    methods: dict[str, grpc.RpcMethodHandler] = {}
    for group in groups:
        wired = group.handlers()
        for name in rpc_method_names(group):
            if name not in wired:
                raise WiringError(
                    f"{type(group).__name__}.{name}: not among the calls it wires "
                    f"({', '.join(sorted(wired))}); a method that is no call takes a "
                    "lower-case or _private name"
                )
        for name, handler in wired.items():
            if name in methods:
                raise WiringError(f"{SERVICE}.{name} implemented twice")
            methods[name] = handler
    return grpc.method_handlers_generic_handler(SERVICE, methods)
