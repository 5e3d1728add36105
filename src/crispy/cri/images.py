"""ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from crispy.api import pb
from crispy.images.registry import Credentials
from crispy.images.service import Image, ImageService


def image_message(img: Image) -> pb.Image:
    msg = pb.Image(
        id=img.id,
        repo_tags=img.repo_tags,
        repo_digests=img.repo_digests,
        size=img.size,
        username=img.username,
        spec=pb.ImageSpec(image=img.id),
        pinned=img.pinned,
    )
    if img.uid is not None:
        msg.uid.value = img.uid
    return msg


def credentials(auth: pb.AuthConfig) -> Credentials | None:
    if not auth.ByteSize():
        return None
    return Credentials.from_auth(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
        server_address=auth.server_address,
    )


class ImageCalls:
    SERVICE = "ImageService"

    def __init__(self, images: ImageService) -> None:
        self.images = images

    async def ListImages(
        self, request: pb.ListImagesRequest, context: Any
    ) -> pb.ListImagesResponse:
        ref = request.filter.image.image if request.HasField("filter") else ""
        images = self.images.list_images(ref)
        return pb.ListImagesResponse(images=[image_message(i) for i in images])

    async def ImageStatus(
        self, request: pb.ImageStatusRequest, context: Any
    ) -> pb.ImageStatusResponse:
        img = self.images.status(request.image.image)
        if img is None:
            return pb.ImageStatusResponse()  # kubelet reads an empty answer as "not present"
        info = {}
        if request.verbose:
            row = img.row
            manifest = None
            if self.images.content.exists(row.manifest_digest):
                manifest = json.loads(self.images.content.read(row.manifest_digest))
            info["info"] = json.dumps(
                {
                    "chainID": row.chain_id,
                    "manifestDigest": row.manifest_digest,
                    "manifestMediaType": row.manifest_media_type,
                    "manifest": manifest,
                    "layers": row.layers,
                    "imageSpec": row.config,
                }
            )
        return pb.ImageStatusResponse(image=image_message(img), info=info)

    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        img = await self.images.pull(request.image.image, credentials(request.auth))
        # kubelet uses what we return as the image reference for its containers: the ID.
        return pb.PullImageResponse(image_ref=img.id)

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Any
    ) -> pb.RemoveImageResponse:
        await self.images.remove(request.image.image)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Any
    ) -> pb.ImageFsInfoResponse:
        usages = [
            pb.FilesystemUsage(
                timestamp=u.timestamp,
                fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint),
                used_bytes=pb.UInt64Value(value=u.used_bytes),
                inodes_used=pb.UInt64Value(value=u.inodes_used),
            )
            for u in await asyncio.to_thread(self.images.fs_usage)
        ]
        # Images and container layers share one filesystem here, as with containerd.
        return pb.ImageFsInfoResponse(image_filesystems=usages, container_filesystems=usages)
