"""crispy.v1.Images/Import and /Export: images to and from tar files on this host.

The paths are the daemon's: `crispy` runs on the same host as root, as crispyd does.
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from crispy import errors
from crispy.cri.extensions import unary_json
from crispy.images.archive import export_archive, import_archive
from crispy.images.service import ImageService


def _path(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise errors.InvalidArgument(f"{key}: a file path is required")
    if not os.path.isabs(value):
        # Relative to what? The daemon's working directory is not the caller's.
        raise errors.InvalidArgument(f"{key}: {value!r} is not an absolute path")
    return value


class ArchiveCalls:
    def __init__(self, images: ImageService) -> None:
        self.images = images

    async def import_(
        self, request: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        path = _path(request, "path")
        name = request.get("name") or None
        if name is not None and not isinstance(name, str):
            raise errors.InvalidArgument("name: a string is expected")
        images = await import_archive(self.images, path, name)
        return {
            "images": [
                {"id": i.id, "repoTags": i.repo_tags, "repoDigests": i.repo_digests} for i in images
            ]
        }

    async def export(
        self, request: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        refs = request.get("refs")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise errors.InvalidArgument("refs: a list of one or more image references is required")
        await export_archive(self.images, refs, _path(request, "path"))
        return {}

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Import": unary_json("Import", self.import_),
            "Export": unary_json("Export", self.export),
        }
