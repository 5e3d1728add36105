"""The infra ("pause") container: only for pods that share one PID namespace.

Such a pod's containers join the PID namespace of a process that must outlive them,
so crispy runs the configured sandbox image's entrypoint as PID 1 of a new PID
namespace, inside the pod's pinned network/IPC/UTS namespaces. Other pods need no
process at all. The container is created by the OCI runtime through the pod's shim,
so the shim (a subreaper) is its parent and crispyd can restart freely.

The shim is only the container's supervisor: stopping and deleting it run the OCI runtime
directly (`kill`, `delete --force` with the handler's root), so a pod whose shim died or
was already shut down by an interrupted RemovePodSandbox can still be torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable

from crispy import errors
from crispy.images.service import ImageService
from crispy.oci.runtime import OciRuntime
from crispy.oci.shim_client import ShimClient, ShimError
from crispy.oci.spec import build_sandbox_spec, sandbox_context
from crispy.sandbox.files import write_atomic
from crispy.sandbox.pod import InfraInfo, Pod, PodPaths
from crispy.shim.runtime_argv import RuntimeArgv
from crispy.system import cgroups, ns
from crispy.system import mount as mnt
from crispy.system.proc import start_time
from crispy.testhook import crash_point

log = logging.getLogger(__name__)


class InfraRunner:
    def __init__(
        self,
        state: str,
        images: ImageService,
        handlers: dict[str, OciRuntime],
        sandbox_image: str,
        cgroup_driver: str,
    ) -> None:
        self.state = state
        self.images = images
        self.handlers = handlers
        self.sandbox_image = sandbox_image
        self.cgroup_driver = cgroup_driver

    def _bundle(self, pod: Pod) -> str:
        return os.path.join(PodPaths.of(self.state, pod.id).dir, "infra")

    def _snapshot_key(self, pod: Pod) -> str:
        return f"infra/{pod.id}"

    def _cgroups_path(self, pod: Pod) -> str:
        info = pod.info
        cg = cgroups.container_cgroup(
            self.cgroup_driver, info.cgroup_parent, info.cgroup_path, pod.id
        )
        return cg.runtime

    async def _runtime(
        self, pod: Pod, build: Callable[[RuntimeArgv], list[str]]
    ) -> tuple[int, str]:
        """Run the pod's OCI runtime through its shim; (exit code, error text)."""
        h = self.handlers[pod.handler]
        cmd = h.argv(pod.info.netns, bundle=self._bundle(pod))
        shim = ShimClient(PodPaths.of(self.state, pod.id).shim_socket)
        try:
            return await h.run_in_shim(shim, cmd, build(cmd), stdio="null")
        except ShimError as e:
            raise errors.Unavailable(f"pod shim: {e}") from None

    async def _runtime_direct(
        self, pod: Pod, build: Callable[[RuntimeArgv], list[str]]
    ) -> tuple[int, str]:
        """Run the pod's OCI runtime from crispyd itself (no shim); (exit code, error text)."""
        h = self.handlers.get(pod.handler)
        if h is None:
            return -1, f"runtime handler {pod.handler!r} is not configured"
        netns = pod.info.netns
        try:
            if netns and not ns.is_pinned(netns):
                netns = ""  # a sandbox runtime's namespace is gone: run it in crispyd's
        except ValueError as e:  # a NUL in a recorded path
            return -1, str(e)
        return await h.run_direct(build(h.argv(netns)))

    def plan(self, pod: Pod) -> InfraInfo:
        """What the pod's record says about its infra container before it exists."""
        return InfraInfo(id=pod.id, snapshot=self._snapshot_key(pod))

    async def start(self, pod: Pod) -> None:
        img = self.images.status(self.sandbox_image)
        if img is None:
            log.info("pulling the sandbox image %s", self.sandbox_image)
            img = await self.images.pull(self.sandbox_image)
        bundle = self._bundle(pod)
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs, exist_ok=True)
        key = self._snapshot_key(pod)
        infra = pod.info.infra = self.plan(pod)
        await asyncio.to_thread(self.images.prepare_rootfs, key, img.id)
        crash_point("infra:rootfs-prepared")
        # Mounted writable: the runtime makes its mount points (/proc, /dev, /sys...) in it
        # first, which the real pause image (FROM scratch: only /pause) lacks. The spec's
        # root.readonly then has the runtime remount it read-only for the process.
        await asyncio.to_thread(self.images.mount_rootfs, key, rootfs)
        crash_point("infra:rootfs-mounted")
        ctx = sandbox_context(
            pod.id,
            rootfs,
            netns=pod.info.netns,
            ipcns=pod.info.ipcns,
            utsns=pod.info.utsns,
            shm=pod.info.shm or "/dev/shm",
            cgroups_path=self._cgroups_path(pod),
        )
        spec = build_sandbox_spec(pod.config, img.row.config, ctx)
        write_atomic(os.path.join(bundle, "config.json"), json.dumps(spec, indent=1))
        crash_point("infra:spec-written")
        pid_file = os.path.join(bundle, "pid")
        rc, err = await self._runtime(pod, lambda cmd: cmd.create(pod.id, bundle, pid_file))
        if rc != 0:
            raise errors.CrispyError(f"creating the pod's infra container: {err}")
        crash_point("infra:created")
        rc, err = await self._runtime(pod, lambda cmd: cmd.start(pod.id))
        if rc != 0:
            raise errors.CrispyError(f"starting the pod's infra container: {err}")
        crash_point("infra:started")
        with open(pid_file) as f:
            pid = int(f.read().strip())
        infra.pid, infra.start = pid, start_time(pid)

    def alive(self, pod: Pod) -> bool:
        infra = pod.info.infra
        if infra is None:
            return True  # a pod without one is alive as long as its namespaces are
        return infra.pid > 0 and start_time(infra.pid) == infra.start

    async def stop(self, pod: Pod, remove: bool = False) -> None:
        """Kill and delete the infra container (and with `remove`, its rootfs). Needs no
        shim; safe to repeat, and after any part of it was done."""
        infra = pod.info.infra
        if infra is None:
            return
        if infra.pid and self.alive(pod):
            rc, err = await self._runtime_direct(pod, lambda cmd: cmd.kill(pod.id, "KILL"))
            if rc != 0 and "not exist" not in err:
                log.warning("pod %s: killing the infra container: %s", pod.id[:12], err)
            await self._wait_exit(pod, infra.pid)
            crash_point("infra:killed")
        rc, err = await self._runtime_direct(pod, lambda cmd: cmd.delete(pod.id, force=True))
        if rc != 0 and "not exist" not in err:
            log.warning("pod %s: deleting the infra container: %s", pod.id[:12], err)
        crash_point("infra:deleted")
        infra.pid = 0
        if remove:
            rootfs = os.path.join(self._bundle(pod), "rootfs")
            with contextlib.suppress(OSError, ValueError):
                mnt.umount(rootfs, mnt.MNT_DETACH)
            await asyncio.to_thread(self.images.remove_rootfs, infra.snapshot)
            pod.info.infra = None

    async def _wait_exit(self, pod: Pod, pid: int, timeout: float = 10.0) -> None:
        """Wait for the killed infra process: its shim reaps it, or init once the shim is gone."""
        with contextlib.suppress(ShimError):
            await ShimClient(PodPaths.of(self.state, pod.id).shim_socket).wait(pid, timeout=timeout)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.alive(pod) and loop.time() < deadline:
            await asyncio.sleep(0.02)
