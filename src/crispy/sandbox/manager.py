"""SandboxManager: the life of a pod sandbox, from RunPodSandbox to RemovePodSandbox.

Each step that makes something outside crispy (a pinned namespace, the CNI attachment,
the shim, the shm mount, the cgroup) is recorded in the pod's SQLite row as soon as it
exists, so a crispyd killed at any point knows exactly what to undo or keep. Teardown
steps are idempotent and tolerate the thing already being gone.

Teardown is recorded as well: StopPodSandbox marks the pod NOTREADY (and `stopping`)
before it kills the infra container or runs CNI DEL, RemovePodSandbox marks it `removing`
before it undoes anything, so a restarted crispyd finishes either. No teardown step needs
the pod's shim (the infra container is killed and deleted by the OCI runtime directly),
and none depends on the strings of the pod's config being valid: whatever a record holds,
the pod can be removed. Those strings are checked at the API edge instead, before
anything is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from crispy import errors, events
from crispy.api import pb
from crispy.config import Config
from crispy.events import EventBus
from crispy.oci.runtime import OciRuntime
from crispy.oci.shim_client import ShimClient, ShimError, start_shim
from crispy.sandbox import cni as cni_mod
from crispy.sandbox import files, sysctls
from crispy.sandbox.pod import (
    CREATING,
    HOSTNAME_MAX,
    NOTREADY,
    READY,
    Pod,
    PodInfo,
    PodPaths,
    reserved_name,
)
from crispy.store import Store, jsonrecord
from crispy.system import cgroups, ns
from crispy.system import mount as mnt
from crispy.system.proc import start_time
from crispy.testhook import crash_point

log = logging.getLogger(__name__)

# containerd's default /dev/shm size for a pod.
SHM_SIZE = "65536k"
SHIM_STOP_TIMEOUT = 5.0

# Called with a pod when it stops / is removed: the containers manager stops/removes
# the pod's containers there (the pod's infra container is this module's own).
PodHook = Callable[[Pod], Awaitable[None]]


def _now_ns() -> int:
    return time.time_ns()


class SandboxManager:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        handlers: dict[str, OciRuntime],
        cni: cni_mod.CNI,
        infra: Any = None,
        cgroup_driver: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.handlers = handlers
        self.cni = cni
        self.infra = infra  # sandbox.infra.InfraRunner for PID-namespace-sharing pods
        self.cgroup_driver = cgroup_driver or cgroups.cgroup_driver()
        self.pods: dict[str, Pod] = {}
        self._names: dict[str, str] = {}  # reserved name -> pod id
        self._locks: dict[str, asyncio.Lock] = {}
        self._shim_tasks: dict[str, asyncio.Future[None]] = {}
        self._infra_watchers: dict[str, asyncio.Task[None]] = {}
        self.on_stop: list[PodHook] = []
        # The shim zygote's socket: pods' shims are forked from it.
        self.zygote = os.path.join(cfg.state, "shim-zygote.sock")
        self.on_remove: list[PodHook] = []
        # GetContainerEvents: the pods' own events and, through ContainerManager, their
        # containers'.
        self.events = EventBus()

    # -- lookups --------------------------------------------------------------------

    def paths(self, pod_id: str) -> PodPaths:
        return PodPaths.of(self.cfg.state, pod_id)

    def _lock(self, pod_id: str) -> asyncio.Lock:
        return self._locks.setdefault(pod_id, asyncio.Lock())

    def find(self, pod_id: str) -> Pod | None:
        """A pod by full ID or unique ID prefix (as crictl lets people type them)."""
        if not pod_id:
            return None
        pod = self.pods.get(pod_id)
        if pod is not None:
            return pod
        matches = [p for i, p in self.pods.items() if i.startswith(pod_id)]
        if len(matches) > 1:
            raise errors.InvalidArgument(f"pod sandbox ID prefix {pod_id!r} is ambiguous")
        return matches[0] if matches else None

    def get(self, pod_id: str) -> Pod:
        pod = self.find(pod_id)
        if pod is None or pod.state == CREATING:
            raise errors.NotFound(f"pod sandbox {pod_id!r} not found")
        return pod

    def list(
        self, pod_id: str = "", state: str | None = None, labels: dict[str, str] | None = None
    ) -> list[Pod]:
        out = []
        for pod in self.pods.values():
            if pod.state == CREATING:
                continue
            if pod_id and not pod.id.startswith(pod_id):
                continue
            if state is not None and pod.state != state:
                continue
            if labels and not pod.labels_match(labels):
                continue
            out.append(pod)
        return out

    def handler(self, name: str) -> OciRuntime:
        want = name or self.cfg.default_runtime
        h = self.handlers.get(want)
        if h is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise errors.InvalidArgument(
                f"runtime handler {want!r} is not configured (configured: {known})"
            )
        return h

    def _save(self, pod: Pod) -> None:
        self.store.update_pod(pod.id, pod.state, jsonrecord.dump(pod.info))

    # -- run ----------------------------------------------------------------------------

    def _validate(self, config: pb.PodSandboxConfig) -> dict[str, str]:
        meta = config.metadata
        for what in ("name", "namespace", "uid"):
            if not getattr(meta, what):
                raise errors.InvalidArgument(f"pod sandbox metadata.{what} is empty")
        opts = config.linux.security_context.namespace_options
        if opts.network == pb.TARGET or opts.ipc == pb.TARGET:
            raise errors.InvalidArgument("a pod's network and IPC modes can't target a container")
        if opts.pid == pb.TARGET:
            raise errors.InvalidArgument("a pod's PID mode can't target a container")
        if opts.HasField("userns_options") and opts.userns_options.mode != pb.NODE:
            raise errors.InvalidArgument("pods in a user namespace are not supported by crispy")
        if opts.network == pb.NODE and config.hostname:
            # It shares the node's UTS namespace: the hostname would be the node's, changed.
            raise errors.InvalidArgument(
                f"hostname {config.hostname!r}: a pod in the node's network namespace has the "
                "node's hostname; leave hostname empty"
            )
        _check_words(config)
        _check_strings(config)
        for pm in config.port_mappings:
            if not 0 <= pm.host_port <= 65535 or not 0 < pm.container_port <= 65535:
                raise errors.InvalidArgument(f"port mapping {pm.host_port}:{pm.container_port}")
        return sysctls.validate(
            dict(config.linux.sysctls),
            host_network=opts.network == pb.NODE,
            host_ipc=opts.ipc == pb.NODE,
        )

    def _cgroup_parent(self, pod_id: str, config: pb.PodSandboxConfig) -> tuple[str, str]:
        """(the CRI value kept for containers, the cgroup path it names)."""
        parent = config.linux.cgroup_parent
        try:
            if self.cgroup_driver == "systemd":
                parent = parent or "crispy.slice"
                return parent, cgroups.systemd_slice_path(parent)
            parent = parent or f"/crispy/{pod_id}"
            return parent, cgroups.normalize_path(parent)
        except ValueError as e:
            raise errors.InvalidArgument(f"cgroup_parent: {e}") from None

    async def run(self, config: pb.PodSandboxConfig, runtime_handler: str) -> str:
        wanted_sysctls = self._validate(config)
        handler = self.handler(runtime_handler)
        name = reserved_name(config.metadata)
        if name in self._names:
            raise errors.AlreadyExists(
                f"pod sandbox name {name!r} is reserved for {self._names[name]}"
            )
        pod_id = secrets.token_hex(32)
        pod = Pod(pod_id, name, CREATING, _now_ns(), handler.name, config)
        pod.info = self._plan(pod)
        pod.info.requested_handler = runtime_handler  # echoed in status, "" included
        self._names[name] = pod_id
        self.pods[pod_id] = pod
        try:
            try:
                # Everything the pod will own is recorded before any of it exists, so a
                # crispyd killed half-way knows what to undo (each undo step tolerates
                # its thing never having been made).
                self.store.add_pod(pod.to_row())
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f"pod sandbox name {name!r} is reserved") from None
            crash_point("run:recorded")
            async with self._lock(pod_id):
                await self._create(pod, wanted_sysctls)
        except BaseException as e:
            log.warning("pod %s (%s): run failed, cleaning up: %s", pod_id[:12], name, e)
            await asyncio.shield(self._destroy(pod))
            raise
        log.info("pod %s (%s) ready, ips %s", pod_id[:12], name, pod.ips)
        return pod_id

    def _plan(self, pod: Pod) -> PodInfo:
        p = self.paths(pod.id)
        parent, cg_path = self._cgroup_parent(pod.id, pod.config)
        return PodInfo(
            netns="" if pod.host_network else p.ns("net"),
            utsns="" if pod.host_network else p.ns("uts"),
            ipcns="" if pod.host_ipc else p.ns("ipc"),
            network=not pod.host_network,  # teardown must run CNI DEL
            cgroup_parent=parent,
            cgroup_path=cg_path,
            # A cgroup that kubelet made is kubelet's to remove.
            cgroup_made=not cgroups.exists_anywhere(cg_path),
            # The missing parents of a cgroup_parent are crispy's to make, and to remove.
            cgroup_parents_made=(
                cgroups.missing_ancestors(cg_path) if pod.config.linux.cgroup_parent else []
            ),
            shm="/dev/shm" if pod.host_ipc else p.shm,
            shim_start=0,
            infra=self.infra.plan(pod) if self.needs_infra(pod) else None,
        )

    async def _create(self, pod: Pod, wanted_sysctls: dict[str, str]) -> None:
        p = self.paths(pod.id)
        cfg = pod.config
        info = pod.info
        os.makedirs(p.dir, mode=0o711)
        os.makedirs(p.ns_dir, mode=0o711)

        # Namespaces first: the network attaches to them.
        pinned = {"net": info.netns, "uts": info.utsns, "ipc": info.ipcns}
        kinds = {k: path for k, path in pinned.items() if path}
        hostname = pod.hostname
        t0 = time.monotonic()
        if kinds:
            try:
                await asyncio.to_thread(ns.pin, kinds, hostname, wanted_sysctls)
            except ns.SysctlError as e:
                raise errors.InvalidArgument(
                    f"sysctl {e.key}={wanted_sysctls.get(e.key, '')!r}: the kernel refused "
                    f"the value ({e})"
                ) from None
            except ns.NamespaceError as e:
                raise errors.CrispyError(f"creating the pod's namespaces: {e}") from None
            crash_point("run:namespaces-pinned")

        # The zygote forks the shim in a millisecond or two, so it starts beside CNI; only a
        # pod with an infra container waits for it here (its containers wait in Create).
        shim_task = self._start_shim_task(pod)
        # CNI is the slow part: the local set-up runs beside it.
        local = asyncio.ensure_future(asyncio.to_thread(self._local_setup, pod))
        t1 = time.monotonic()
        try:
            if info.network:
                try:
                    result = await self.cni.setup(self._pod_network(pod))
                except cni_mod.CNIError as e:
                    raise errors.CrispyError(f"setting up the pod network: {e}") from None
                info.ips = result.ips
                crash_point("run:network-added")
        finally:
            await asyncio.shield(local)  # never undo what a running thread is making
        crash_point("run:local-setup-done")
        if self.needs_infra(pod):
            await asyncio.shield(shim_task)
        t2 = time.monotonic()

        hostname_file = os.uname().nodename if pod.host_network else hostname
        dns = files.DNS(
            list(cfg.dns_config.servers),
            list(cfg.dns_config.searches),
            list(cfg.dns_config.options),
        )
        await asyncio.to_thread(
            files.write_pod_files, p.dir, hostname_file, dns, pod.ips, pod.host_network
        )
        crash_point("run:files-written")

        if self.needs_infra(pod):
            assert self.infra is not None
            await self.infra.start(pod)

        # Only a pod that came up is announced: a failed run leaves nothing to delete.
        self.events.emit(pod.id, pod.id, events.CREATED)
        pod.state = READY
        self._save(pod)
        crash_point("run:ready")
        self.events.emit(pod.id, pod.id, events.STARTED)
        self._watch_infra(pod)
        log.debug(
            "pod %s: namespaces %.1f ms, network %.1f ms, rest %.1f ms",
            pod.id[:12],
            (t1 - t0) * 1e3,
            (t2 - t1) * 1e3,
            (time.monotonic() - t2) * 1e3,
        )

    def _local_setup(self, pod: Pod) -> None:
        """The pod's cgroup, its /dev/shm and its log dir (in a thread)."""
        cgroups.create(pod.info.cgroup_path)
        if not pod.host_ipc:
            shm = pod.info.shm
            os.mkdir(shm, 0o1777)
            mnt.mount(
                "shm",
                shm,
                "tmpfs",
                mnt.MS_NOSUID | mnt.MS_NODEV | mnt.MS_NOEXEC,
                f"mode=1777,size={SHM_SIZE}",
            )
        if pod.config.log_directory:
            # kubelet's /var/log/pods/<ns>_<name>_<uid>: the containers' logs go there.
            os.makedirs(pod.config.log_directory, mode=0o755, exist_ok=True)

    # -- the pod's shim ------------------------------------------------------------------

    def _start_shim_task(self, pod: Pod) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._start_shim(pod))
        self._shim_tasks[pod.id] = task
        task.add_done_callback(_log_failure(pod.id))
        return task

    async def _start_shim(self, pod: Pod) -> None:
        p = self.paths(pod.id)
        try:
            shim = await start_shim(pod.id, p.shim_socket, p.shim_log, zygote=self.zygote)
        except ShimError as e:
            raise errors.Unavailable(f"starting the pod's shim: {e}") from None
        crash_point("shim:started")
        pod.info.shim_pid = shim.pid
        pod.info.shim_start = start_time(shim.pid)
        if pod.id in self.pods:
            self._save(pod)

    async def shim(self, pod: Pod) -> ShimClient:
        """A client of the pod's shim, started first if it is not running yet."""
        task = self._shim_tasks.get(pod.id)
        if (
            task is None
            or (task.done() and (task.cancelled() or task.exception()))
            or (task.done() and not self.shim_alive(pod))
        ):
            task = self._start_shim_task(pod)
        await asyncio.shield(task)
        return ShimClient(self.paths(pod.id).shim_socket)

    def needs_infra(self, pod: Pod) -> bool:
        """A pod runs an infra container when its containers share one PID namespace, or
        when its runtime keeps one sandbox per pod (gVisor)."""
        if self.infra is None:
            return False
        h = self.handlers.get(pod.handler)
        return pod.shared_pid or (h is not None and h.sandbox_container)

    def shim_alive(self, pod: Pod) -> bool:
        return _is_shim(pod)

    def _pod_network(
        self, pod: Pod, netns: str | None = None, clean: bool = False
    ) -> cni_mod.PodNetwork:
        """The pod as CNI sees it. With `clean` (for DEL), strings no env var or argv can
        carry are scrubbed: a record holding them must still be removable."""
        cfg = pod.config
        c = _scrub if clean else str
        return cni_mod.PodNetwork(
            pod_id=pod.id,
            netns=pod.info.netns if netns is None else netns,
            name=c(cfg.metadata.name),
            namespace=c(cfg.metadata.namespace),
            uid=c(cfg.metadata.uid),
            port_mappings=[
                cni_mod.PortMapping(
                    host_port=pm.host_port,
                    container_port=pm.container_port,
                    protocol=pb.Protocol.Name(pm.protocol).lower(),
                    host_ip=pm.host_ip if not clean or _is_ip(pm.host_ip) else "",
                )
                for pm in cfg.port_mappings
            ],
            annotations={
                k: v
                for k, v in cfg.annotations.items()
                if not clean or ("\0" not in k and "\0" not in v)
            },
            cgroup_parent=c(pod.info.cgroup_parent),
        )

    # -- stop and remove ---------------------------------------------------------------------

    async def stop(self, pod_id: str) -> None:
        """Stop the pod's containers and release its network. Unknown pods are fine."""
        pod = self.find(pod_id)
        if pod is None:
            return
        async with self._lock(pod.id):
            if pod.id not in self.pods:
                return  # removed while we waited
            await self._stop(pod)

    async def _stop(self, pod: Pod) -> None:
        for hook in self.on_stop:
            await hook(pod)
        was = pod.state
        if was != NOTREADY or not pod.info.stopping:
            # Recorded before the infra container dies or CNI DEL frees the pod's IP: a
            # crispyd killed from here on restarts with a NOTREADY pod and finishes this.
            pod.state = NOTREADY
            pod.info.stopping = True
            self._save(pod)
            crash_point("stop:recorded")
        await self._finish_stop(pod)
        if was != NOTREADY:
            self.events.emit(pod.id, pod.id, events.STOPPED)
            log.info("pod %s (%s) stopped", pod.id[:12], pod.name)

    async def _finish_stop(self, pod: Pod) -> None:
        """The pod's own part of a stop: its infra container, then its network."""
        if self.infra is not None and pod.info.infra:
            await self.infra.stop(pod)
            self._save(pod)
            crash_point("stop:infra-stopped")
        await self._teardown_network(pod)
        pod.info.stopping = False
        self._save(pod)
        crash_point("stop:done")

    async def _teardown_network(self, pod: Pod) -> None:
        netns = pod.info.netns
        if pod.info.network:
            # DEL runs with whatever netns is left ("" once it is gone); the CNI result
            # cache carries the rest, so this works after a restart and a second time.
            alive = netns if netns and _pinned(netns) else ""
            try:
                await self.cni.teardown(self._pod_network(pod, alive, clean=True))
            except cni_mod.CNIError as e:
                raise errors.CrispyError(f"tearing down the pod network: {e}") from None
            crash_point("stop:cni-deleted")
            pod.info.network = False
            pod.info.ips = []
            self._save(pod)
        if netns:
            with contextlib.suppress(ValueError):
                await asyncio.to_thread(ns.release, netns)

    async def remove(self, pod_id: str) -> None:
        """Stop if needed, then delete everything of the pod. Unknown pods are fine."""
        pod = self.find(pod_id)
        if pod is None:
            return
        async with self._lock(pod.id):
            if pod.id not in self.pods:
                return
            await self._stop(pod)
            for hook in self.on_remove:
                await hook(pod)
            # From here a restarted crispyd finishes the removal by itself.
            pod.info.removing = True
            self._save(pod)
            crash_point("remove:recorded")
            await self._destroy(pod)
        self._locks.pop(pod.id, None)
        self.events.emit(pod.id, pod.id, events.DELETED, pod)  # rendered from its last state
        log.info("pod %s (%s) removed", pod.id[:12], pod.name)

    async def _destroy(self, pod: Pod) -> None:
        """Undo whatever of the pod exists, in reverse order of creation; then forget it.
        Each step is tried whatever the ones before did: what one fails on (a runtime
        error, a value no syscall takes) is logged, and never keeps the rest from running."""
        p = self.paths(pod.id)
        watcher = self._infra_watchers.pop(pod.id, None)
        if watcher is not None:
            watcher.cancel()

        async def step(what: str, fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except Exception as e:
                log.warning("pod %s: %s: %s", pod.id[:12], what, e)

        if self.infra is not None and pod.info.infra:
            await step("removing the infra container", lambda: self.infra.stop(pod, remove=True))
            self._save_quietly(pod)
            crash_point("remove:infra-removed")
        await step("tearing down the network", lambda: self._teardown_network(pod))
        crash_point("remove:network-down")
        await step("stopping the shim", lambda: self._stop_shim(pod))
        crash_point("remove:shim-stopped")
        await step("releasing the namespaces and mounts", lambda: self._release_mounts(pod))
        crash_point("remove:mounts-released")
        await step("removing the cgroup", lambda: asyncio.to_thread(self._remove_cgroups, pod))
        crash_point("remove:cgroups-removed")
        shutil.rmtree(p.dir, ignore_errors=True)
        crash_point("remove:dir-removed")
        shutil.rmtree(p.ns_dir, ignore_errors=True)
        self.store.delete_pod(pod.id)
        self.pods.pop(pod.id, None)
        if self._names.get(pod.name) == pod.id:
            del self._names[pod.name]

    def _save_quietly(self, pod: Pod) -> None:
        if pod.id in self.pods:
            with contextlib.suppress(Exception):
                self._save(pod)

    async def _release_mounts(self, pod: Pod) -> None:
        p = self.paths(pod.id)
        for kind in ("ipc", "uts", "net"):
            await asyncio.to_thread(ns.release, p.ns(kind))
        for target in mnt.mounts_under(p.dir):
            with contextlib.suppress(OSError):
                mnt.umount(target, mnt.MNT_DETACH)

    def _remove_cgroups(self, pod: Pod) -> None:
        cg = pod.info.cgroup_path
        if cg and pod.info.cgroup_made:
            busy = cgroups.remove(cg)
            if busy:
                log.warning("pod %s: cgroup still busy: %s", pod.id[:12], ", ".join(busy))
        cgroups.remove_if_empty(list(pod.info.cgroup_parents_made))

    async def _stop_shim(self, pod: Pod) -> None:
        task = self._shim_tasks.pop(pod.id, None)
        if task is not None and not task.done():
            # Let a start in flight finish: cancelling it could orphan a spawned shim.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        sock = self.paths(pod.id).shim_socket
        if os.path.exists(sock):
            with contextlib.suppress(ShimError):
                await ShimClient(sock, timeout=SHIM_STOP_TIMEOUT).shutdown()
        if pod.info.shim_pid:
            await _wait_gone(pod, SHIM_STOP_TIMEOUT)

    # -- status --------------------------------------------------------------------------

    def _watch_infra(self, pod: Pod) -> None:
        """Notice the infra container's death when it happens, not at the next status call:
        kubelet's Evented PLEG learns of it from the STOPPED event alone."""
        pid = pod.info.infra.pid if pod.info.infra else 0
        if pid and self.infra is not None and pod.id not in self._infra_watchers:
            task = asyncio.ensure_future(self._infra_watcher(pod, pid))
            self._infra_watchers[pod.id] = task
            task.add_done_callback(lambda _: self._infra_watchers.pop(pod.id, None))

    async def _infra_watcher(self, pod: Pod, pid: int) -> None:
        try:
            await ShimClient(self.paths(pod.id).shim_socket).wait(pid, timeout=None)
        except ShimError:
            return  # its shim is gone: status() still finds a dead infra container
        if self.pods.get(pod.id) is pod and pod.state == READY:
            self.status(pod.id)  # marks it NOTREADY, and tells the subscribers

    def status(self, pod_id: str) -> Pod:
        pod = self.get(pod_id)
        if pod.state == READY and self.infra is not None and not self.infra.alive(pod):
            # The shared PID namespace's init died: kubelet must recreate the pod.
            pod.state = NOTREADY
            self._save(pod)
            self.events.emit(pod.id, pod.id, events.STOPPED)
        return pod

    # -- restart recovery ----------------------------------------------------------------

    async def recover(self) -> None:
        """Load every pod; roll back half-made ones; re-attach to the shims of live ones."""
        for row in self.store.list_pods():
            pod = Pod.from_row(row)
            self.pods[pod.id] = pod
            self._names[pod.name] = pod.id
        for pod in list(self.pods.values()):
            try:
                await self._recover_one(pod)
            except Exception as e:  # one bad pod must not keep crispyd from serving
                log.error("pod %s: recovery failed: %s", pod.id[:12], e)

    async def _recover_one(self, pod: Pod) -> None:
        if pod.state == CREATING:
            log.info(
                "pod %s (%s): half created by a previous crispyd; removing", pod.id[:12], pod.name
            )
            await self._destroy(pod)
            return
        if pod.info.removing:
            log.info("pod %s (%s): finishing its removal", pod.id[:12], pod.name)
            await self._destroy(pod)
            return
        adopted = await self._adopt_shim(pod)
        if pod.state == NOTREADY and pod.info.stopping:
            log.info("pod %s (%s): finishing its stop", pod.id[:12], pod.name)
            await self._finish_stop(pod)
            return
        if pod.state != READY:
            return
        netns = pod.info.netns
        if netns and not ns.is_pinned(netns):
            # The namespaces went with a reboot (the state dir is tmpfs): the pod is dead.
            log.info("pod %s: its network namespace is gone; marking it not ready", pod.id[:12])
            await self._stop(pod)
            return
        if adopted:
            log.info("pod %s: reconnected to its shim", pod.id[:12])
            self._watch_infra(pod)
            return
        log.warning("pod %s: its shim is not running; starting one", pod.id[:12])
        await self.shim(pod)

    async def _adopt_shim(self, pod: Pod) -> bool:
        """Take over the pod's running shim after a restart. A crispyd killed just after the
        shim started never recorded its pid: the shim tells it."""
        try:
            health = await ShimClient(self.paths(pod.id).shim_socket, timeout=2.0).health()
        except ShimError:
            return False
        if health.get("pod_id") != pod.id:
            return False
        pid = int(health.get("pid") or 0)
        if pid and pod.info.shim_pid != pid:
            pod.info.shim_pid = pid
            pod.info.shim_start = start_time(pid)
            self._save(pod)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        self._shim_tasks[pod.id] = done
        return True


def _bad_word(value: str) -> bool:
    """Whether `value` would not stay one word of /etc/hosts or resolv.conf: whitespace
    (a newline would start a line of its own) or any control character, NUL among them."""
    return any(ch.isspace() or not ch.isprintable() for ch in value)


def _check_words(config: pb.PodSandboxConfig) -> None:
    """The hostname and DNS settings are written into the pod's hosts and resolv.conf files."""
    if config.hostname and (len(config.hostname) > HOSTNAME_MAX or _bad_word(config.hostname)):
        raise errors.InvalidArgument(
            f"hostname {config.hostname!r} is not valid: at most {HOSTNAME_MAX} characters, "
            "no whitespace or control characters"
        )
    dns = config.dns_config
    for what, values in (
        ("servers", dns.servers),
        ("searches", dns.searches),
        ("options", dns.options),
    ):
        for i, value in enumerate(values):
            if not value or _bad_word(value):
                raise errors.InvalidArgument(
                    f"dns_config.{what}[{i}] {value!r} is empty or contains whitespace or a "
                    "control character"
                )


_META_FORBIDDEN = frozenset("/;=")


def _check_strings(config: pb.PodSandboxConfig) -> None:
    """Every other string of the config that reaches a path, an argv, an env var or a file:
    refused here, before anything of the pod exists (rollback never sees them)."""
    meta = config.metadata
    for what in ("name", "namespace", "uid"):
        value = getattr(meta, what)
        # They go into CNI_ARGS (`;`-separated `K=V` pairs) and plugins' file names.
        if _bad_word(value) or _META_FORBIDDEN & set(value) or value in (".", ".."):
            raise errors.InvalidArgument(
                f"pod sandbox metadata.{what} {value!r} is not valid: no whitespace, control "
                "characters, '/', ';' or '='"
            )
    parent = config.linux.cgroup_parent
    if _control(parent):
        raise errors.InvalidArgument(f"cgroup_parent {parent!r} contains a control character")
    logs = config.log_directory
    if logs and (not os.path.isabs(logs) or _control(logs) or ".." in logs.split("/")):
        raise errors.InvalidArgument(
            f"log_directory {logs!r} is not valid: an absolute path without '..' or control "
            "characters"
        )
    for i, pm in enumerate(config.port_mappings):
        if pm.host_ip and not _is_ip(pm.host_ip):
            raise errors.InvalidArgument(
                f"port_mappings[{i}].host_ip {pm.host_ip!r} is not an IP address"
            )
    for key, value in config.annotations.items():
        # All of them reach the CNI plugins (the io.kubernetes.cri.pod-annotations arg).
        if "\0" in key or "\0" in value:
            raise errors.InvalidArgument(f"annotations[{key!r}] contains a NUL byte")
    try:
        cni_mod.bandwidth_args(dict(config.annotations))
    except cni_mod.CNIError as e:
        raise errors.InvalidArgument(f"annotations: {e}") from None


def _control(value: str) -> bool:
    return any(not ch.isprintable() for ch in value)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _scrub(value: str) -> str:
    """`value` without the characters no argv or env var can carry (or should)."""
    return "".join(ch for ch in value if ch.isprintable())


def _pinned(path: str) -> bool:
    try:
        return ns.is_pinned(path)
    except ValueError:  # a NUL in a recorded path: nothing is pinned there
        return False


def _log_failure(pod_id: str) -> Callable[[asyncio.Future[None]], None]:
    def done(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pod %s: %s", pod_id[:12], task.exception())

    return done


async def _wait_gone(pod: Pod, timeout: float) -> None:
    """Wait for the pod's shim to exit; kill it if it won't (never a reused pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_shim(pod):
            return
        await asyncio.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pod.info.shim_pid, 9)


def _is_shim(pod: Pod) -> bool:
    """Whether the pod's shim process runs (its pid with the start time recorded for it)."""
    pid = pod.info.shim_pid
    if pid <= 0:
        return False
    if pod.info.shim_start is None:  # recorded by an older crispy: match its command line
        return _is_shim_of(pid, pod.id)
    return start_time(pid) == pod.info.shim_start != 0


def _is_shim_of(pid: int, pod_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie (state Z) has exited; only its parent's wait is missing.
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pod_id.encode() in f.read()
    except (OSError, IndexError):
        return False
