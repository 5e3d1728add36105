"""The running daemon: locks, state store, gRPC server on the CRI socket, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass

import grpc

from crispy import __version__, metrics
from crispy.config import Config
from crispy.containers.execs import ContainerExecs
from crispy.containers.manager import ContainerManager
from crispy.cri.archive import ArchiveCalls
from crispy.cri.containers import ContainerCalls
from crispy.cri.extensions import extension_handler
from crispy.cri.images import ImageCalls
from crispy.cri.pull_progress import PullProgressCalls
from crispy.cri.sandbox import SandboxCalls
from crispy.cri.service import cri_handlers
from crispy.cri.stats import StatsCalls
from crispy.cri.status import RuntimeInfoCalls
from crispy.cri.streaming import StreamingCalls
from crispy.daemon.lock import DirLock, LockError
from crispy.images.service import ImageService
from crispy.metrics.prometheus import Metrics, MetricsEndpoint
from crispy.oci import runtime as oci_runtime
from crispy.oci.shim_client import stop_zygote
from crispy.runtime_status import RuntimeInfo
from crispy.sandbox.cni import CNI
from crispy.sandbox.infra import InfraRunner
from crispy.sandbox.manager import SandboxManager
from crispy.snapshots import new_snapshotter
from crispy.stats.service import StatsService
from crispy.store import Store, StoreError
from crispy.streaming import portforward, portforward_ws, remotecommand
from crispy.streaming.server import StreamingServer, streaming_tls
from crispy.system.cgroups import cgroup_driver

log = logging.getLogger("crispyd")

# kubelet's CRI client allows 16 MiB messages; a large ListContainers needs it.
MAX_MESSAGE = 16 * 1024 * 1024
# ExecSync answers with up to 16 MiB of stdout and 16 MiB of stderr (the CRI's cap each).
MAX_SEND = 2 * MAX_MESSAGE + (64 << 10)
SHUTDOWN_GRACE = 5.0


class StartupError(Exception):
    """crispyd can't start; the message says why and what to do."""


def _socket_in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def prepare_socket_path(path: str) -> None:
    """Make the socket's dir; clear a socket left by a crispyd that died."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it")
    if _socket_in_use(path):
        raise StartupError(f"{path} is in use by another process")
    os.unlink(path)


def _notify_systemd(message: str) -> None:
    """sd_notify(3) for Type=notify units; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), addr)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)


def _remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True)
class _Parts:
    """What the build step makes and the serve step serves."""

    info: RuntimeInfo
    images: ImageService
    sandboxes: SandboxManager
    containers: ContainerManager
    execs: ContainerExecs


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._locks = [DirLock(cfg.state), DirLock(cfg.root)]
        self._stop = asyncio.Event()

    def _acquire_locks(self) -> None:
        taken = []
        try:
            for lock in self._locks:
                lock.acquire()
                taken.append(lock)
        except LockError as e:
            for lock in taken:
                lock.release()
            raise StartupError(str(e)) from None
        except OSError as e:
            for lock in taken:
                lock.release()
            raise StartupError(f"cannot lock {e.filename}: {e.strerror}") from None

    def _release_locks(self) -> None:
        for lock in reversed(self._locks):
            lock.release()

    async def run(self) -> int:
        """Build the runtime, then serve it until SIGTERM/SIGINT or stop().

        Whatever each step makes registers its cleanup on one exit stack as it is made,
        so an error at any point (a StartupError included) undoes exactly what was made,
        last made first; the locks go last.
        """
        async with contextlib.AsyncExitStack() as stack:
            parts = await self._build(stack)
            return await self._serve(stack, parts)

    async def _build(self, stack: contextlib.AsyncExitStack) -> _Parts:
        """Locks, state store, handlers, image service and managers, recovered."""
        cfg = self.cfg
        self._acquire_locks()
        stack.callback(self._release_locks)
        try:
            store = Store(cfg.db_path)
        except StoreError as e:
            raise StartupError(str(e)) from None
        stack.callback(store.close)
        store.set_meta("crispy_version", __version__)
        handlers = oci_runtime.discover(cfg)
        info = RuntimeInfo(cfg, store, handlers)
        snapshotter = new_snapshotter(
            cfg.images.snapshotter,
            os.path.join(cfg.root, "snapshots"),
            cfg.images.max_unpacked_layer_size,
        )
        images = ImageService(cfg, store, snapshotter)
        stack.push_async_callback(images.close)
        images.on_pull.append(metrics.record_pull)
        images.recover()
        driver = cgroup_driver()
        sandboxes = SandboxManager(
            cfg,
            store,
            handlers,
            CNI(cfg.cni.conf_dir, cfg.cni.bin_dirs, os.path.join(cfg.root, "cni", "results")),
            InfraRunner(cfg.state, images, handlers, cfg.sandbox_image, driver),
            driver,
        )
        containers = ContainerManager(cfg, store, images, sandboxes)
        containers.load()
        await sandboxes.recover()
        await containers.recover()
        return _Parts(info, images, sandboxes, containers, ContainerExecs(containers))

    async def _serve(self, stack: contextlib.AsyncExitStack, parts: _Parts) -> int:
        """The streaming server, the CRI socket and /metrics; 0 once stopped gracefully."""
        cfg = self.cfg
        # The two servers stop at once when anything fails; gracefully when asked to stop.
        listeners = await stack.enter_async_context(contextlib.AsyncExitStack())
        streaming = self._streaming_server(parts.execs)
        listeners.push_async_callback(streaming.stop)
        server = self._grpc_server(parts, streaming)
        listeners.push_async_callback(server.stop, 0)
        sock = cfg.socket_path
        prepare_socket_path(sock)
        try:
            server.add_insecure_port(f"unix://{sock}")
        except RuntimeError as e:
            raise StartupError(f"cannot listen on {sock}: {e}") from None
        stack.callback(_remove_socket, sock)  # the socket file is ours now
        await server.start()
        os.chmod(sock, 0o660)
        try:
            await streaming.start()
        except OSError as e:
            raise StartupError(
                f"streaming: cannot listen on {cfg.streaming.address}:{cfg.streaming.port}: "
                f"{e.strerror or e}"
            ) from None
        log.info("streaming server on %s", streaming.base_url)
        if cfg.metrics.address:
            endpoint = await self._serve_metrics(parts)
            stack.push_async_callback(endpoint.stop)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        log.info("crispyd %s serving the CRI on unix://%s", __version__, sock)
        _notify_systemd("READY=1")

        await self._stop.wait()

        _notify_systemd("STOPPING=1")
        log.info("stopping: no new calls; %.0fs for calls in flight", SHUTDOWN_GRACE)
        listeners.pop_all()  # they stop gracefully here, not at once
        await server.stop(SHUTDOWN_GRACE)
        await streaming.stop()
        # Shims keep running; the zygote only serves new pods, which need crispyd.
        await stop_zygote(parts.sandboxes.zygote)
        return 0

    def _streaming_server(self, execs: ContainerExecs) -> StreamingServer:
        """Exec, attach and port-forward over SPDY and WebSocket; not listening yet."""
        cfg = self.cfg
        try:
            tls = streaming_tls(cfg)
        except OSError as e:  # ssl.SSLError too
            raise StartupError(f"streaming: cannot load the TLS certificate: {e}") from None
        streaming = StreamingServer(
            cfg.streaming.address,
            cfg.streaming.port,
            ssl_context=tls,
            idle_timeout=cfg.streaming.idle_timeout,
        )
        for kind in (remotecommand.EXEC, remotecommand.ATTACH):
            streaming.handle(
                kind,
                remotecommand.SPDY_PROTOCOLS,
                remotecommand.spdy_handler(execs, kind),
                remotecommand.websocket_handler(execs, kind),
            )
        streaming.handle(
            portforward.KIND, [portforward.PROTOCOL], portforward.serve, portforward_ws.serve
        )
        return streaming

    def _grpc_server(self, parts: _Parts, streaming: StreamingServer) -> grpc.aio.Server:
        """The CRI services and crispy's own calls; not listening yet."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_SEND),
            ]
        )
        server.add_generic_rpc_handlers(
            cri_handlers(
                [
                    RuntimeInfoCalls(parts.info),
                    ImageCalls(parts.images),
                    SandboxCalls(parts.sandboxes),
                    ContainerCalls(parts.containers, parts.execs),
                    StatsCalls(StatsService(parts.containers)),
                    StreamingCalls(parts.sandboxes, parts.execs, streaming),
                ]
            )
        )
        # crispy's own calls for its CLI (pull progress, import/export).
        server.add_generic_rpc_handlers(
            [extension_handler([PullProgressCalls(parts.images), ArchiveCalls(parts.images)])]
        )
        return server

    async def _serve_metrics(self, parts: _Parts) -> MetricsEndpoint:
        """`[metrics] address`: the /metrics endpoint; gauges read the managers per scrape."""
        sandboxes, containers, images = parts.sandboxes, parts.containers, parts.images
        m = Metrics()
        m.set_state_sources(
            pods=lambda: [p.state for p in sandboxes.pods.values()],
            containers=lambda: [c.state for c in containers.containers.values()],
        )
        m.set_pull_bytes_source(lambda: images.puller.bytes_downloaded)
        endpoint = MetricsEndpoint(m, self.cfg.metrics.address)
        try:
            await endpoint.start()
        except OSError as e:
            raise StartupError(
                f"metrics.address: cannot listen on {self.cfg.metrics.address}: {e.strerror or e}"
            ) from None
        return endpoint

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
