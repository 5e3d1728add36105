"""crispy.v1.Images/PullProgress: live per-layer progress of a pull, for `crispy pull`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from crispy import errors
from crispy.cri.extensions import stream_json
from crispy.images import reference
from crispy.images.pull import PullProgress
from crispy.images.service import ImageService

INTERVAL = 0.2
WAIT_FOR_START = 10.0  # the client subscribes before its PullImage has reached us


def snapshot(p: PullProgress) -> dict[str, Any]:
    return {
        "reference": p.reference,
        "elapsed": time.monotonic() - p.started,
        "layers": [
            {"digest": lp.digest, "size": lp.size, "done": lp.done, "state": lp.state}
            for lp in p.layers.values()
        ],
    }


class PullProgressCalls:
    def __init__(self, images: ImageService) -> None:
        self.images = images

    def _find(self, ref: str) -> PullProgress | None:
        for p in list(self.images.puller.progress.values()):
            if p.reference == ref:
                return p
        return None

    async def stream(
        self, request: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dict[str, Any]]:
        raw = request.get("reference")
        if not isinstance(raw, str):
            raise errors.InvalidArgument("reference: a string is required")
        ref = str(reference.parse(raw))
        deadline = time.monotonic() + WAIT_FOR_START
        seen = False
        while True:
            p = self._find(ref)
            if p is None:
                if seen or time.monotonic() > deadline:
                    return
            else:
                seen = True
                yield snapshot(p)
            await asyncio.sleep(INTERVAL)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {"PullProgress": stream_json("PullProgress", self.stream)}
