"""CRI image mounts (KEP-4639 image volumes): another image's filesystem, read-only, in a
container. Not to be confused with image VOLUMEs (volumes.py), the dirs an image asks for.

kubelet pulls the image first and sends its ID in `Mount.image`; an image that is not
here is NotFound. The image is looked up as CreateContainer looks up the container's own
(ImageService.resolve: ID, ID prefix, tag or repo digest).

Each image mount of a container gets:
- a view snapshot, `image-mount/<container id>/<n>` (n: the mount's index in the config),
  on top of the image's layer chain. It is an "active" snapshot nothing writes to, so the
  garbage collector keeps its layers as it keeps those under a container's rootfs: a
  RemoveImage while a container (created, running, or exited and not removed) uses the
  image deletes the image, not the layers it mounts (crispy's rule for a container's own
  image, too). Its own dir stays empty: it is what shows for an image without layers.
- a read-only mount of the image's chain at `<bundle>/image-mounts/<n>` (overlay of the
  layers, or a read-only bind of the one layer or, under the native snapshotter, of the
  chain's top copy), bound by the OCI runtime at container_path; with image_sub_path, the
  dir it names inside. Whether that dir exists can only be seen in the mounted image:
  a bad one fails the create after the mount is made, and the create's cleanup undoes it.

They are per container, not per pod and image as containerd shares them: a container's
removal then undoes exactly what it made, and no pod-wide refcount is needed. The plan
(keys and mount points) is part of the container's record, which is written before any
of it is made, so a crispyd killed mid-create leaves nothing that the removal of the
half-made container at the next start (or the failed create's own cleanup) doesn't find.
"""

from __future__ import annotations

import errno
import os
import stat

from crispy import errors
from crispy.api import pb
from crispy.containers.record import ContainerInfo, ImageMountPlan
from crispy.images.service import ImageService
from crispy.oci import spec as specmod
from crispy.snapshots import base as snapbase

MAX_SYMLINKS = 40  # as the kernel's path walk


def plan(
    images: ImageService, config: pb.ContainerConfig, cid: str, bundle: str
) -> list[ImageMountPlan]:
    """Check every image mount and find its image, before anything is made; one plan per
    image mount, recorded in ContainerInfo.image_mounts."""
    out: list[ImageMountPlan] = []
    for i, m in enumerate(config.mounts):
        found = specmod.image_mount(m)
        if found is None:
            continue
        dest, sub = found
        try:
            row = images.resolve(m.image.image)
        except errors.InvalidArgument as e:
            raise errors.InvalidArgument(f"mount {dest}: image.image: {e}") from None
        if row is None:
            raise errors.NotFound(f"mount {dest}: image {m.image.image!r} not found; pull it first")
        out.append(
            ImageMountPlan(
                index=i,
                dest=dest,
                image=row.id,
                sub_path=sub,
                snapshot=f"image-mount/{cid}/{i}",
                target=os.path.join(bundle, "image-mounts", str(i)),
            )
        )
    return out


def make(images: ImageService, planned: list[ImageMountPlan]) -> dict[str, str]:
    """Make each planned view and mount; container_path → the host dir to bind there.

    Blocking (it mounts): run it in a thread. What it made before a failure stays
    recorded for remove().
    """
    sources: dict[str, str] = {}
    for p in planned:
        os.makedirs(p.target, mode=0o755, exist_ok=True)
        images.prepare_view(p.snapshot, p.image)
        images.mount_rootfs(p.snapshot, p.target, readonly=True)
        what = f"mount {p.dest}: image_sub_path {p.sub_path!r}"
        sources[p.dest] = resolve_sub_path(p.target, p.sub_path, what)
    return sources


def remove(images: ImageService, planned: list[ImageMountPlan]) -> None:
    """Unmount and drop whatever of the plan exists (blocking); absence is fine."""
    for p in planned:
        snapbase.unmount_all(p.target)
    images.remove_views([p.snapshot for p in planned])


def image_ids(info: ContainerInfo) -> dict[int, str]:
    """The image ID of each image mount of a container record, by its index in the config."""
    return {p.index: p.image for p in info.image_mounts}


def resolve_sub_path(root: str, sub: str, what: str) -> str:
    """The host path of the dir `sub` names below the mounted image at `root`.

    Symlinks are followed inside the image: an absolute target from the image's root (as
    the image means it), a relative one from its dir. A path that climbs above the root
    (through "..", directly or in a symlink) is refused rather than clamped, as is one
    that does not exist or is not a dir: InvalidArgument with `what` (the field).
    """
    comps = [c for c in sub.split("/") if c]
    done: list[str] = []
    links = 0
    while comps:
        c = comps.pop(0)
        if c == ".":
            continue
        if c == "..":
            if not done:
                raise errors.InvalidArgument(f"{what} leads out of the image")
            done.pop()
            continue
        path = os.path.join(root, *done, c)
        try:
            st = os.lstat(path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise errors.InvalidArgument(f"{what} does not exist in the image") from None
            raise
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise errors.InvalidArgument(f"{what}: too many levels of symbolic links")
            target = os.readlink(path)
            if target.startswith("/"):
                done = []
            comps = [t for t in target.split("/") if t] + comps
            continue
        if not stat.S_ISDIR(st.st_mode):
            shown = "/".join([*done, c])
            raise errors.InvalidArgument(f"{what}: {shown!r} in the image is not a directory")
        done.append(c)
    return os.path.join(root, *done)
