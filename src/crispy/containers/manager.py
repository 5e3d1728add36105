"""ContainerManager: a container's life from CreateContainer to RemoveContainer.

crispyd owns the records and the rootfs; the pod's shim owns the processes (it runs the
OCI runtime, is the parent of every container process, writes the CRI log and an exit
file per container). A watcher task per running container turns the shim's exit record
into the container's EXITED state and a STOPPED event; ContainerStatus also reads the
exit file, so nothing depends on a watcher having run (crispyd may have been down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import time
from typing import Any

from crispy import errors, events
from crispy.api import pb
from crispy.config import Config
from crispy.containers import image_mounts, volumes
from crispy.containers.log_path import container_log_path
from crispy.containers.record import (
    COMPLETED,
    CREATED,
    CREATING,
    ERROR,
    EXITED,
    OOM_KILLED,
    RUNNING,
    Container,
    ContainerInfo,
    bundle_dir,
)
from crispy.containers.stop_signal import resolve_stop_signal
from crispy.images.service import ImageService
from crispy.oci import spec as specmod
from crispy.oci.shim_client import ShimClient, ShimError
from crispy.sandbox.files import write_atomic
from crispy.sandbox.manager import SandboxManager
from crispy.sandbox.pod import READY, Pod, PodPaths
from crispy.store import Store
from crispy.system import cgroups
from crispy.system import mount as mnt
from crispy.testhook import crash_point

log = logging.getLogger(__name__)

EXIT_FILE_GRACE = 3.0  # the shim drains the output (≤ 1 s) before it writes the exit file
KILL_WAIT = 10.0


def _now() -> int:
    return time.time_ns()


class ContainerManager:
    def __init__(
        self, cfg: Config, store: Store, images: ImageService, sandboxes: SandboxManager
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.images = images
        self.sandboxes = sandboxes
        self.containers: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        sandboxes.on_stop.append(self._stop_pod_containers)
        sandboxes.on_remove.append(self._remove_pod_containers)

    # -- lookups ---------------------------------------------------------------------

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def find(self, cid: str) -> Container | None:
        if not cid:
            return None
        c = self.containers.get(cid)
        if c is not None:
            return c
        matches = [c for i, c in self.containers.items() if i.startswith(cid)]
        if len(matches) > 1:
            raise errors.InvalidArgument(f"container ID prefix {cid!r} is ambiguous")
        return matches[0] if matches else None

    def get(self, cid: str) -> Container:
        c = self.find(cid)
        if c is None or c.state == CREATING:
            raise errors.NotFound(f"container {cid!r} not found")
        return c

    def select(
        self,
        cid: str = "",
        state: str | None = None,
        pod_id: str = "",
        labels: dict[str, str] | None = None,
    ) -> list[Container]:
        out = []
        for c in self.containers.values():
            if c.state == CREATING:
                continue
            self._refresh(c)
            if cid and not c.id.startswith(cid):
                continue
            if state is not None and c.state != state:
                continue
            if pod_id and not c.pod_id.startswith(pod_id):
                continue
            if labels and not c.labels_match(labels):
                continue
            out.append(c)
        return out

    def of_pod(self, pod_id: str) -> list[Container]:
        return [c for c in self.containers.values() if c.pod_id == pod_id]

    def _save(self, c: Container) -> None:
        self.store.update_container(c.to_row())

    # -- events ----------------------------------------------------------------------

    def _emit(self, c: Container, kind: str) -> None:
        self.sandboxes.events.emit(c.id, c.pod_id, kind)

    # -- create ----------------------------------------------------------------------

    def _shim_of(self, pod: Pod) -> ShimClient:
        return ShimClient(PodPaths.of(self.cfg.state, pod.id).shim_socket)

    def cgroup_path(self, c: Container) -> str:
        """The container's cgroup inside each hierarchy (for stats)."""
        pod = self.sandboxes.find(c.pod_id)
        if pod is None:
            return ""
        return self._cgroup(pod, c.id).path

    def _cgroup(self, pod: Pod, cid: str) -> cgroups.ContainerCgroup:
        return cgroups.container_cgroup(
            self.sandboxes.cgroup_driver, pod.info.cgroup_parent, pod.info.cgroup_path, cid
        )

    def _cgroups_path(self, pod: Pod, cid: str) -> str:
        return self._cgroup(pod, cid).runtime

    def _oom_file(self, pod: Pod, cid: str) -> str:
        rel = self._cgroup(pod, cid).path
        v1 = os.path.join(cgroups.CGROUP_ROOT, "memory", rel.lstrip("/"), "memory.oom_control")
        if os.path.isdir(os.path.join(cgroups.CGROUP_ROOT, "memory")):
            return v1
        return os.path.join(cgroups.CGROUP_ROOT, rel.lstrip("/"), "memory.events")

    def _target_pid_ns(self, pod: Pod, target_id: str) -> str:
        """The PID namespace of a running container of the same pod, for `pid: TARGET`
        (kubelet's ephemeral containers with a target container: kubectl debug --target)."""
        target = self.find(target_id) if target_id else None
        if target is None or target.pod_id != pod.id:
            raise errors.NotFound(
                f"namespace_options.target_id: no container {target_id!r} in pod {pod.id}"
            )
        self._refresh(target)
        if target.state != RUNNING or not target.pid:
            raise errors.FailedPrecondition(
                f"namespace_options.target_id: container {target.id} is not running"
            )
        return f"/proc/{target.pid}/ns/pid"

    def _context(
        self, pod: Pod, cid: str, rootfs: str, volume_dir: str, config: pb.ContainerConfig
    ) -> specmod.SpecContext:
        p = PodPaths.of(self.cfg.state, pod.id)
        infra = pod.info.infra
        pid_ns = f"/proc/{infra.pid}/ns/pid" if pod.shared_pid and infra and infra.pid else ""
        opts = config.linux.security_context.namespace_options
        if opts.pid == pb.TARGET:
            pid_ns = self._target_pid_ns(pod, opts.target_id)
        handler = self.sandboxes.handlers[pod.handler]
        return specmod.SpecContext(
            container_id=cid,
            pod_id=pod.id,
            rootfs=rootfs,
            netns=pod.info.netns,
            ipcns=pod.info.ipcns,
            utsns=pod.info.utsns,
            pid_ns=pid_ns,
            shm=pod.info.shm or "/dev/shm",
            resolv_conf=p.file("resolv.conf"),
            hosts=p.file("hosts"),
            hostname_file=p.file("hostname"),
            hostname=pod.hostname,
            cgroups_path=self._cgroups_path(pod, cid),
            volume_dir=volume_dir,
            rro_supported=handler.features.recursive_read_only_mounts,
            min_oom_score_adj=_own_oom_score_adj(),
            sandbox_container=handler.sandbox_container,
        )

    async def create(self, pod_id: str, config: pb.ContainerConfig) -> str:
        pod = self.sandboxes.get(pod_id)
        if pod.state != READY:
            raise errors.FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        meta = config.metadata
        if not meta.name:
            raise errors.InvalidArgument("container metadata.name is empty")
        name = f"{meta.name}_{meta.attempt}"
        for other in self.of_pod(pod.id):
            if other.name == name:
                raise errors.AlreadyExists(
                    f"container name {meta.name!r} (attempt {meta.attempt}) is reserved in pod "
                    f"{pod.id} for {other.id}"
                )
        if not config.image.image:
            raise errors.InvalidArgument("container config has no image")
        opts = config.linux.security_context.namespace_options
        if opts.pid == pb.TARGET:
            self._target_pid_ns(pod, opts.target_id)  # checked before anything is made
        image = self.images.resolve(config.image.image)
        if image is None:
            raise errors.NotFound(f"image {config.image.image!r} not found; pull it first")
        cid = secrets.token_hex(32)
        bundle = bundle_dir(self.cfg.state, cid)
        log_path = container_log_path(pod.config.log_directory, config.log_path)
        # Not refused when bad (images with odd StopSignals exist): the stop copes.
        stop_signum = resolve_stop_signal(cid, config, image.config, warn=True)
        planned = image_mounts.plan(self.images, config, cid, bundle)
        c = Container(
            id=cid,
            pod_id=pod.id,
            name=name,
            state=CREATING,
            created_at=_now(),
            config=config,
            image_ref=image.id,
            info=ContainerInfo(
                bundle=bundle,
                snapshot=f"container/{cid}",
                log_path=log_path,
                handler=pod.handler,
                stop_signal=stop_signum,
                image_mounts=planned,
            ),
        )
        self.containers[cid] = c
        try:
            try:
                self.store.add_container(c.to_row())
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f"container name {meta.name!r} is reserved") from None
            crash_point("create:recorded")
            async with self._lock(cid):
                await self._create(c, pod, image.config)
        except BaseException as e:
            log.warning("container %s: create failed, cleaning up: %s", cid[:12], e)
            await asyncio.shield(self._destroy(c))
            raise
        self._emit(c, events.CREATED)
        log.info("container %s (%s) created in pod %s", cid[:12], name, pod.id[:12])
        return cid

    async def _create(self, c: Container, pod: Pod, image_config: dict[str, Any]) -> None:
        t0 = time.monotonic()
        bundle = c.bundle
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs, mode=0o700)
        await asyncio.to_thread(self.images.prepare_rootfs, c.info.snapshot, c.image_ref)
        crash_point("create:rootfs-prepared")
        await asyncio.to_thread(self.images.mount_rootfs, c.info.snapshot, rootfs)
        crash_point("create:rootfs-mounted")
        volume_dir = os.path.join(bundle, "volumes")
        t1 = time.monotonic()
        ctx = self._context(pod, c.id, rootfs, volume_dir, c.config)
        ctx.image_mounts = await asyncio.to_thread(
            image_mounts.make, self.images, c.info.image_mounts
        )
        spec = specmod.build_spec(c.config, pod.config, image_config, ctx)
        await asyncio.to_thread(volumes.prepare, rootfs, image_config, c.config, volume_dir)
        write_atomic(os.path.join(bundle, "config.json"), json.dumps(spec))
        crash_point("create:spec-written")
        shim = await self.sandboxes.shim(pod)
        h = self.sandboxes.handlers[pod.handler]
        t2 = time.monotonic()
        # The shim makes the log's dirs below the pod's log_directory itself, following no
        # symlink there (log_root): crispyd makes none of them.
        reply = await shim.call(
            "create",
            id=c.id,
            bundle=bundle,
            runtime=h.prefix(pod.info.netns),
            log_path=c.log_path,
            log_root=os.path.normpath(pod.config.log_directory) if c.log_path else "",
            stdin=c.config.stdin,
            stdin_once=c.config.stdin_once,
            tty=c.config.tty,
            exit_file=c.exit_file,
            oom_file=self._oom_file(pod, c.id),
            runtime_wait=h.sandbox_container,
        )
        crash_point("create:runtime-created")
        c.info.pid = int(reply["pid"])
        c.state = CREATED
        self._save(c)
        crash_point("create:created")
        log.debug(
            "container %s: rootfs %.1f ms, spec %.1f ms, runtime create %.1f ms",
            c.id[:12],
            (t1 - t0) * 1e3,
            (t2 - t1) * 1e3,
            (time.monotonic() - t2) * 1e3,
        )

    # -- start -------------------------------------------------------------------------

    async def start(self, cid: str) -> None:
        c = self.get(cid)
        async with self._lock(c.id):
            if c.state != CREATED:
                raise errors.FailedPrecondition(
                    f"container {c.id} is {c.state}, not created; it can't be started"
                )
            pod = self.sandboxes.get(c.pod_id)
            try:
                started_at = await self._shim_of(pod).start(c.id)
            except ShimError as e:
                c.state = EXITED
                c.finished_at = _now()
                c.exit_code = 128
                c.reason = "StartError"
                c.message = str(e)
                self._save(c)
                self._emit(c, events.STOPPED)
                raise errors.CrispyError(f"starting container {c.id}: {e}") from None
            crash_point("start:runtime-started")
            c.state = RUNNING
            c.started_at = started_at or _now()
            self._exited[c.id] = asyncio.Event()
            self._save(c)
            crash_point("start:running")
            self._watch(c, pod)
        self._emit(c, events.STARTED)
        log.info("container %s started, pid %d", c.id[:12], c.pid)

    # -- exits ---------------------------------------------------------------------------

    def _watch(self, c: Container, pod: Pod) -> None:
        old = self._watchers.pop(c.id, None)
        if old is not None:
            old.cancel()
        self._watchers[c.id] = asyncio.ensure_future(self._watcher(c, pod))

    async def _watcher(self, c: Container, pod: Pod) -> None:
        shim = self._shim_of(pod)
        shim_died = False
        while c.state == RUNNING:
            try:
                await shim.wait_container(c.id, timeout=3600)
                break
            except ShimError as e:
                if str(e).startswith("timeout"):
                    continue
                log.debug("container %s: waiting through the shim: %s", c.id[:12], e)
                if not self.sandboxes.shim_alive(pod):
                    shim_died = True
                    break
                await asyncio.sleep(1)
        if shim_died:
            await self._orphaned(c, pod)
            return
        deadline = time.monotonic() + EXIT_FILE_GRACE
        while not os.path.exists(c.exit_file) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._refresh(c, shim_gone=not os.path.exists(c.exit_file))

    async def _orphaned(self, c: Container, pod: Pod) -> None:
        """The pod's shim died: nobody supervises the container, logs its output or will
        record its exit. Kill it through the OCI runtime so the state we report is true."""
        if _read_exit(c.exit_file) is None:
            log.error("container %s: the pod's shim died; killing the container", c.id[:12])
            h = self.sandboxes.handlers[pod.handler]
            cmd = h.argv(pod.info.netns)
            for argv in (cmd.kill(c.id, "KILL", all=True), cmd.delete(c.id, force=True)):
                await h.run_direct(argv)
        self._refresh(c, shim_gone=True)

    def _refresh(self, c: Container, shim_gone: bool = False) -> None:
        """Turn a recorded exit into EXITED (once); with shim_gone, an unrecorded one too."""
        if c.state not in (RUNNING, CREATED):
            return
        rec = _read_exit(c.exit_file)
        if rec is None and not shim_gone:
            return
        c.state = EXITED
        if rec is None:
            c.finished_at = _now()
            c.reason = ERROR
            c.exit_code = 137
            c.message = "the pod's shim died; crispy killed the unsupervised container"
        else:
            # A process can exit before `runtime start` has returned: never before it started.
            c.finished_at = max(int(rec.get("finished_at") or _now()), c.started_at)
            c.exit_code = int(rec.get("exit_code", 255))
            if rec.get("oom_killed"):
                c.reason = OOM_KILLED
            else:
                c.reason = COMPLETED if c.exit_code == 0 else ERROR
        self._save(c)
        ev = self._exited.get(c.id)
        if ev is not None:
            ev.set()
        self._emit(c, events.STOPPED)
        log.info("container %s exited with %d (%s)", c.id[:12], c.exit_code, c.reason)

    async def _wait_exit(self, c: Container, timeout: float) -> bool:
        ev = self._exited.setdefault(c.id, asyncio.Event())
        if c.state == EXITED:
            return True
        try:
            async with asyncio.timeout(timeout):
                while c.state != EXITED:
                    self._refresh(c)
                    if c.state == EXITED:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await ev.wait()
        except TimeoutError:
            return False
        return True

    # -- stop and remove ----------------------------------------------------------------

    def stop_signal(self, c: Container) -> int:
        """The signal StopContainer sends first (see _stop_signal), fixed at create."""
        if not c.info.stop_signal:  # recorded by an older crispy
            row = self.store.get_image(c.image_ref)
            c.info.stop_signal = resolve_stop_signal(c.id, c.config, row.config if row else {})
        return c.info.stop_signal

    async def stop(self, cid: str, timeout: int) -> None:
        c = self.find(cid)
        if c is None:
            return
        async with self._lock(c.id):
            await self._stop(c, timeout)

    async def _stop(self, c: Container, timeout: float) -> None:
        self._refresh(c)
        if c.state not in (RUNNING, CREATED):
            return
        pod = self.sandboxes.find(c.pod_id)
        shim = self._shim_of(pod) if pod else None
        if shim is None:
            return
        if c.state == CREATED:
            # Never started: its init waits in runc; removing it is stopping it.
            with contextlib.suppress(ShimError):
                await shim.delete(c.id, force=True)
            crash_point("stop-container:deleted-unstarted")
            c.state = EXITED
            c.finished_at = _now()
            c.exit_code = 137
            c.reason = ERROR
            c.message = "stopped before it was started"
            self._save(c)
            self._emit(c, events.STOPPED)
            return
        if timeout > 0:
            signum = self.stop_signal(c)
            try:
                await shim.kill(c.id, signum)
                crash_point("stop-container:signalled")
            except ShimError as e:
                log.warning("container %s: stop signal %d: %s", c.id[:12], signum, e)
                if signum != signal.SIGTERM:  # the runtime would not send it: the default
                    with contextlib.suppress(ShimError):
                        await shim.kill(c.id, int(signal.SIGTERM))
            if await self._wait_exit(c, timeout):
                return
        try:
            await shim.kill(c.id, int(signal.SIGKILL), all=True)
        except ShimError as e:
            log.info("container %s: SIGKILL: %s", c.id[:12], e)
        crash_point("stop-container:killed")
        if not await self._wait_exit(c, KILL_WAIT):
            raise errors.DeadlineExceeded(f"container {c.id} did not exit after SIGKILL")

    async def remove(self, cid: str) -> None:
        c = self.find(cid)
        if c is None:
            return
        async with self._lock(c.id):
            if c.id not in self.containers:
                return
            await self._stop(c, 0)
            await self._destroy(c)
        self._locks.pop(c.id, None)
        self._emit(c, events.DELETED)
        log.info("container %s removed", c.id[:12])

    async def _destroy(self, c: Container) -> None:
        """Undo whatever of the container exists; then forget it. Each step tolerates absence."""
        watcher = self._watchers.pop(c.id, None)
        if watcher is not None:
            watcher.cancel()
        pod = self.sandboxes.find(c.pod_id)
        if pod is not None:
            with contextlib.suppress(ShimError):
                await self._shim_of(pod).delete(c.id, force=True)
        crash_point("remove-container:runtime-deleted")
        rootfs = os.path.join(c.bundle, "rootfs")
        for target in mnt.mounts_under(c.bundle):
            with contextlib.suppress(OSError):
                mnt.umount(target, mnt.MNT_DETACH)
        crash_point("remove-container:unmounted")
        await asyncio.to_thread(self.images.remove_rootfs, c.info.snapshot)
        crash_point("remove-container:rootfs-removed")
        await asyncio.to_thread(image_mounts.remove, self.images, c.info.image_mounts)
        await asyncio.to_thread(shutil.rmtree, c.bundle, True)
        crash_point("remove-container:bundle-removed")
        del rootfs
        self.store.delete_container(c.id)
        self.containers.pop(c.id, None)
        self._exited.pop(c.id, None)

    async def _stop_pod_containers(self, pod: Pod) -> None:
        # StopPodSandbox: kubelet has stopped them gracefully already; what is left is killed.
        for c in self.of_pod(pod.id):
            async with self._lock(c.id):
                await self._stop(c, 0)

    async def _remove_pod_containers(self, pod: Pod) -> None:
        for c in self.of_pod(pod.id):
            await self.remove(c.id)

    # -- update, logs --------------------------------------------------------------------

    def running(self, cid: str) -> Container:
        """The container, if it runs (what exec, attach and log reopening need)."""
        c = self.get(cid)
        self._refresh(c)
        if c.state != RUNNING:
            raise errors.FailedPrecondition(f"container {c.id} is not running")
        return c

    def shim_of(self, c: Container) -> ShimClient:
        """The client of the container's pod's shim."""
        return self._shim_of(self.sandboxes.get(c.pod_id))

    async def update_resources(self, cid: str, resources: pb.LinuxContainerResources) -> None:
        c = self.get(cid)
        self._refresh(c)
        if c.state not in (RUNNING, CREATED):
            raise errors.FailedPrecondition(f"container {c.id} is not running")
        doc = specmod.linux_resources(resources)
        pod = self.sandboxes.get(c.pod_id)
        h = self.sandboxes.handlers[pod.handler]
        cmd = h.argv(pod.info.netns, bundle=c.bundle)
        rc, err = await h.run_in_shim(
            self._shim_of(pod), cmd, cmd.update(c.id), stdin=json.dumps(doc), timeout=30
        )
        if rc != 0:
            raise errors.CrispyError(f"updating container {c.id}: {err}")
        c.config.linux.resources.CopyFrom(resources)
        self.store.update_container(c.to_row())
        # config.json keeps what the container runs with, for status and restarts
        path = os.path.join(c.bundle, "config.json")
        with open(path) as f:
            spec = json.load(f)
        spec.setdefault("linux", {})["resources"] = {
            **spec.get("linux", {}).get("resources", {}),
            **doc,
        }
        write_atomic(path, json.dumps(spec))

    async def reopen_log(self, cid: str) -> None:
        c = self.running(cid)
        await self.shim_of(c).reopen_log(c.id)

    def status(self, cid: str) -> Container:
        c = self.get(cid)
        self._refresh(c)
        return c

    def spec(self, c: Container) -> dict[str, Any] | None:
        try:
            with open(os.path.join(c.bundle, "config.json")) as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return None

    # -- restart recovery ------------------------------------------------------------------

    def load(self) -> None:
        """Read every container's record (before the pods recover: they may stop some)."""
        for row in self.store.list_containers():
            c = Container.from_row(row)
            self.stop_signal(c)  # fills in what an older crispy did not record
            self.containers[c.id] = c

    async def recover(self) -> None:
        """Undo half-made containers; pick up exits that happened while crispyd was down;
        watch the ones still running."""
        for c in list(self.containers.values()):
            try:
                await self._recover_one(c)
            except Exception as e:  # one bad container must not keep crispyd from serving
                log.error("container %s: recovery failed: %s", c.id[:12], e)

    async def _recover_one(self, c: Container) -> None:
        if c.state == CREATING:
            log.info("container %s: half created by a previous crispyd; removing", c.id[:12])
            await self._destroy(c)
            return
        if c.state not in (RUNNING, CREATED):
            return
        pod = self.sandboxes.find(c.pod_id)
        known: dict[str, Any] = {}
        if pod is not None:
            with contextlib.suppress(ShimError):
                known = await self._shim_of(pod).containers()
        if c.id not in known:
            if pod is not None and not self.sandboxes.shim_alive(pod):
                await self._orphaned(c, pod)
            else:
                self._refresh(c, shim_gone=True)
            return
        started = int(known[c.id].get("started_at") or 0)
        if c.state == CREATED and started:
            # Killed between the runtime's start and the record of it: it did start.
            log.info("container %s: started by the previous crispyd; recording it", c.id[:12])
            c.state = RUNNING
            c.started_at = started
            self._save(c)
        self._refresh(c)
        if c.state == RUNNING and pod is not None:
            self._exited[c.id] = asyncio.Event()
            self._watch(c, pod)


def _read_exit(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _own_oom_score_adj() -> int:
    """Containers may not ask for less than crispyd has (the host may lack CAP_SYS_RESOURCE)."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0
