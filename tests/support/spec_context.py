"""A SpecContext for spec unit tests: a pod's namespaces, files and cgroup at fixed paths,
and no host lookups (capabilities, machine, kernel and mount propagation are given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crispy.oci import spec as specmod
from crispy.oci.spec import SpecContext


def make_ctx(rootfs: Path, **kw: Any) -> SpecContext:
    base: dict[str, Any] = dict(
        container_id="c0ffee",
        pod_id="p0d",
        rootfs=str(rootfs),
        netns="/run/crispy/ns/p0d/net",
        ipcns="/run/crispy/ns/p0d/ipc",
        utsns="/run/crispy/ns/p0d/uts",
        pid_ns="",
        shm="/run/crispy/pods/p0d/shm",
        resolv_conf="/run/crispy/pods/p0d/resolv.conf",
        hosts="/run/crispy/pods/p0d/hosts",
        hostname_file="/run/crispy/pods/p0d/hostname",
        hostname="web-0",
        cgroups_path="/kubepods/pod123/c0ffee",
        volume_dir="/run/crispy/containers/c0ffee/volumes",
        all_caps=specmod.CAP_NAMES,
        machine="x86_64",
        kernel=(6, 1),
        node_hostname="node-1",
        mount_propagation=lambda path: None,  # no host lookup: propagation is not checked
    )
    base.update(kw)
    return SpecContext(**base)
