"""Image VOLUMEs: a dir per volume, seeded with what the image has at that path.

As containerd does, a new volume starts as a copy of the image's dir there (content,
owner, mode), so an image that ships /data owned by its user keeps working. The path is
resolved inside the rootfs (symlinks confined to it, as the unpacker does), and nothing
below it is followed: symlinks are copied as symlinks, devices and FIFOs are skipped.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any

from crispy.api import pb
from crispy.oci import spec as specmod
from crispy.system.beneath import open_beneath

COPY_CHUNK = 1 << 20


def prepare(
    rootfs: str, image_config: dict[str, Any], config: pb.ContainerConfig, volume_dir: str
) -> None:
    for dest in specmod.image_volume_destinations(image_config, config):
        target = os.path.join(volume_dir, specmod.volume_name(dest))
        if os.path.exists(target):
            continue  # made (and seeded) before: a restart of the same container
        os.makedirs(target, mode=0o755)
        seed(rootfs, dest, target)


def seed(rootfs: str, dest: str, target: str) -> None:
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = open_beneath(root, dest, "image volume")
    except Exception:  # an unreadable or hostile path: the volume starts empty
        found = None
    finally:
        os.close(root)
    if found is None:
        return
    fd, st = found
    try:
        if not stat.S_ISDIR(st.st_mode):
            return
        src = f"/proc/self/fd/{fd}"
        _copy_tree(src, target)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def _copy_tree(src: str, dst: str) -> None:
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        st = os.lstat(s)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            _copy_tree(s, d)
            os.chmod(d, mode)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(s, d)
            os.chmod(d, mode)
        else:
            continue  # devices, FIFOs, sockets: nothing a volume needs
        with contextlib.suppress(OSError):
            os.lchown(d, st.st_uid, st.st_gid)


def _copy_file(src: str, dst: str) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while os.sendfile(fout, fin, None, COPY_CHUNK):
                pass
        finally:
            os.close(fout)
    finally:
        os.close(fin)
