"""Wiring call groups to the CRI services (crispy.cri.service) and to crispy's own
(crispy.cri.extensions): a misnamed RPC method stops the wiring instead of leaving the
RPC silently UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import MagicMock

import grpc
import pytest

from crispy.cri.archive import ArchiveCalls
from crispy.cri.containers import ContainerCalls
from crispy.cri.extensions import extension_handler, unary_json
from crispy.cri.images import ImageCalls
from crispy.cri.pull_progress import PullProgressCalls
from crispy.cri.sandbox import SandboxCalls
from crispy.cri.service import WiringError, cri_handlers, rpc_method_names
from crispy.cri.stats import StatsCalls
from crispy.cri.status import RuntimeInfoCalls
from crispy.cri.streaming import StreamingCalls


class Versioned:
    SERVICE = "RuntimeService"

    async def Version(self, request: Any, context: Any) -> Any:
        return None

    async def helper(self) -> None:
        """Lower-case: not an RPC, so never checked."""

    async def _Private(self) -> None:
        """Private: not an RPC either."""

    def Sync(self) -> None:
        """Not async: not taken for an RPC."""


class Misspelled(Versioned):
    async def StopContainr(self, request: Any, context: Any) -> Any:
        return None


class MisspelledStream:
    SERVICE = "RuntimeService"

    async def GetContainerEvent(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield None


class WrongService:
    SERVICE = "ImageService"

    async def Version(self, request: Any, context: Any) -> Any:
        return None


class UnknownService:
    SERVICE = "RuntimeServce"

    async def Version(self, request: Any, context: Any) -> Any:
        return None


def test_a_well_named_group_is_wired() -> None:
    assert rpc_method_names(Versioned()) == ["Version"]
    assert len(cri_handlers([Versioned()])) == 2


def test_crispys_own_groups_are_wired() -> None:
    none: Any = MagicMock()
    groups = [
        RuntimeInfoCalls(none),
        ImageCalls(none),
        SandboxCalls(none),
        ContainerCalls(none, none),
        StatsCalls(none),
        StreamingCalls(none, none, none),
    ]
    cri_handlers(groups)
    extension_handler([PullProgressCalls(none), ArchiveCalls(none)])


def test_a_misspelled_rpc_method_is_refused_naming_class_and_method() -> None:
    with pytest.raises(WiringError, match=r"Misspelled\.StopContainr") as e:
        cri_handlers([Misspelled()])
    assert "did you mean StopContainer?" in str(e.value)


def test_a_misspelled_streaming_rpc_method_is_refused() -> None:
    with pytest.raises(WiringError, match=r"MisspelledStream\.GetContainerEvent\b"):
        cri_handlers([MisspelledStream()])


def test_an_rpc_of_the_other_service_is_refused() -> None:
    with pytest.raises(WiringError, match=r"WrongService\.Version: ImageService has no RPC"):
        cri_handlers([WrongService()])


def test_a_group_of_no_cri_service_is_refused() -> None:
    with pytest.raises(WiringError, match=r"UnknownService\.SERVICE is 'RuntimeServce'"):
        cri_handlers([UnknownService()])
    with pytest.raises(WiringError, match=r"PullProgressCalls\.SERVICE is None"):
        cri_handlers([PullProgressCalls(None)])  # type: ignore[arg-type]


def test_an_rpc_implemented_twice_is_refused() -> None:
    with pytest.raises(WiringError, match=r"RuntimeService\.Version implemented twice"):
        cri_handlers([Versioned(), Versioned()])


async def _echo(doc: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
    return doc


class Echo:
    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {"Echo": unary_json("Echo", _echo)}


class EchoWithStray(Echo):
    async def Ecko(self, request: Any, context: Any) -> Any:
        return None


def test_an_extension_call_wired_twice_is_refused() -> None:
    extension_handler([Echo()])
    with pytest.raises(WiringError, match=r"crispy\.v1\.Images\.Echo implemented twice"):
        extension_handler([Echo(), Echo()])


def test_an_extension_group_with_an_unwired_rpc_method_is_refused() -> None:
    with pytest.raises(WiringError, match=r"EchoWithStray\.Ecko: not among the calls it wires"):
        extension_handler([EchoWithStray()])
