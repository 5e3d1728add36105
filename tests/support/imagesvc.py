"""An in-process ImageService on temp dirs, for tests of the image manager without gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from crispy.config import from_table
from crispy.images.service import ImageService
from crispy.snapshots import new_snapshotter
from crispy.store import Store

from .images import UnpackExpectation

T = TypeVar("T")


def make_service(
    root: Path, snapshotter: str = "overlayfs", hosts_dir: Path | None = None, **images: Any
) -> ImageService:
    cfg = from_table(
        {
            "root": str(root / "root"),
            "state": str(root / "state"),
            "registry": {"hosts_dir": str(hosts_dir or root / "certs.d")},
            "images": {"snapshotter": snapshotter, **images},
        }
    )
    store = Store(cfg.db_path)
    snap = new_snapshotter(cfg.images.snapshotter, os.path.join(cfg.root, "snapshots"))
    svc = ImageService(cfg, store, snap)
    svc.recover()
    return svc


def run(root: Path, body: Callable[[ImageService], Awaitable[T]], **kw: Any) -> T:
    """Run `body(service)` on a fresh event loop; the service is closed afterwards."""

    async def main() -> T:
        svc = make_service(root, **kw)
        try:
            return await body(svc)
        finally:
            await svc.close()
            svc.store.close()

    return asyncio.run(main())


@contextlib.contextmanager
def mounted_rootfs(
    svc: ImageService, image_id: str, target: Path, key: str = "test-rootfs"
) -> Iterator[Path]:
    """The image's rootfs as a container would see it, mounted at `target`."""
    target.mkdir(parents=True, exist_ok=True)
    svc.prepare_rootfs(key, image_id)
    svc.mount_rootfs(key, str(target))
    try:
        yield target
    finally:
        svc.snapshotter.unmount(str(target))
        svc.remove_rootfs(key)


def check_expectation(rootfs: Path, expect: UnpackExpectation) -> None:
    for path, content in expect.files.items():
        assert (rootfs / path.lstrip("/")).read_bytes() == content, path
    for path in expect.dirs:
        assert (rootfs / path.lstrip("/")).is_dir(), path
    for path in expect.absent:
        assert not os.path.lexists(rootfs / path.lstrip("/")), path
