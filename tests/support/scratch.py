"""FROM-scratch test images, shaped like the real artifacts kubelet and critest use.

`registry.k8s.io/pause` holds `/pause` and nothing else: no /proc, /dev, /sys or /etc,
`USER 65535:65535`, `ENTRYPOINT ["/pause"]`. Distroless images are alike: a static
program and no mount points. The fixtures build both kinds the same way, so every pod
test meets the rootfs a real node meets.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

from .images import BUSYBOX, Layer, LayerBuilder

PAUSE_SOURCE = Path(__file__).parent / "pause" / "pause.c"
PAUSE_USER = "65535:65535"


@functools.cache
def pause_binary() -> bytes:
    """The fixtures' pause program, compiled static (it runs in an empty rootfs)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("the test pause image needs a C compiler (make setup installs gcc)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "pause"
        subprocess.run(
            [cc, "-static", "-Os", "-s", "-o", str(out), str(PAUSE_SOURCE)],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


def pause_layer() -> Layer:
    """The only layer of a FROM-scratch pause image: `/pause`, and no directory at all."""
    return LayerBuilder().file("pause", pause_binary(), mode=0o755).build()


@functools.cache
def static_busybox_layer() -> Layer:
    """A distroless-style layer: the static busybox at `/busybox`, nothing else."""
    return LayerBuilder().file("busybox", BUSYBOX.read_bytes(), mode=0o755).build()
