"""images.max_unpacked_layer_size through the real daemon: a layer that unpacks to more
than the limit (a decompression bomb's shape: a small gzip blob of zeros) fails its pull,
naming the layer and the setting, and leaves no image or snapshot behind."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from crispy.api import pb
from support.daemon import Crispyd, default_config
from support.images import LayerBuilder, image_config, push_image
from support.registry import Registry

pytestmark = pytest.mark.root

MiB = 1024 * 1024


def test_a_layer_over_the_limit_fails_its_pull_and_leaves_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    bomb = LayerBuilder().file("zeros", b"\0" * (8 * MiB)).build()  # ~8 KiB of gzip
    small = LayerBuilder().file("ok", b"fine\n").build()
    img = push_image(
        registry, "crispy-test/bomb", "latest", [small, bomb], image_config([small, bomb])
    )
    d = Crispyd(
        tmp_path, config=default_config(tmp_path) + "[images]\nmax_unpacked_layer_size = 4194304\n"
    )
    d.start()
    try:
        with d.client(timeout=60) as cri:
            with pytest.raises(grpc.RpcError) as e:
                cri.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=img.reference)))
            details = e.value.details() or ""
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
            assert bomb.digest in details and "max_unpacked_layer_size" in details, details
            assert not cri.image.ListImages(pb.ListImagesRequest()).images
        snaps = d.root / "snapshots"
        left = [n for n in os.listdir(snaps) if (snaps / n / "fs" / "zeros").exists()]
        assert left == []
    finally:
        d.stop()
