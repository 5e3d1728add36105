"""crispy.v1.Images/Import and /Export (being written)."""

from __future__ import annotations

import grpc

from crispy.images.service import ImageService


class ArchiveCalls:
    def __init__(self, images: ImageService) -> None:
        self.images = images

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {}
