"""`crispy port-forward POD-ID [LOCAL:]REMOTE...`, as kubectl and crictl have it.

CRI PortForward gives a single-use streaming URL; one SPDY/3.1 session on it carries every
forwarded connection (an `error` and a `data` stream each), for as long as the command runs.
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
from typing import Any

from crispy.api import pb
from crispy.cli.client import CriClient
from crispy.cli.lookups import IDLookupError, resolve_pod
from crispy.streaming.client import SpdySession, UpgradeError

LISTEN_HOST = "127.0.0.1"


def register(sub: Any) -> None:
    p = sub.add_parser("port-forward", help="forward local ports to a pod sandbox (127.0.0.1 only)")
    p.add_argument("pod", metavar="POD-ID", help="pod ID or unique prefix")
    p.add_argument(
        "ports",
        nargs="+",
        type=parse_mapping,
        metavar="[LOCAL:]REMOTE",
        help="ports to forward; LOCAL omitted means the same as REMOTE, "
        "':REMOTE' or '0:REMOTE' a free port",
    )
    p.set_defaults(func=cmd_port_forward)


def _port(text: str, *, allow_zero: bool) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: not a port number")
    return int(text)


def parse_mapping(value: str) -> tuple[int, int]:
    """``[LOCAL:]REMOTE`` -> (local, remote); local 0 means any free port."""
    local, colon, remote = value.rpartition(":")
    if not colon:
        port = _port(remote, allow_zero=False)
        return port, port
    return (_port(local, allow_zero=True) if local else 0), _port(remote, allow_zero=False)


def cmd_port_forward(client: CriClient, args: argparse.Namespace) -> int:
    try:
        pod_id = resolve_pod(client, args.pod)
    except IDLookupError as e:
        print(f"crispy: {e}", file=sys.stderr)
        return 1
    ports = sorted({remote for _, remote in args.ports})
    url = client.runtime.PortForward(
        pb.PortForwardRequest(pod_sandbox_id=pod_id, port=ports), timeout=client.timeout
    ).url
    return asyncio.run(Forwarder(url, args.ports).run())


class Forwarder:
    def __init__(self, url: str, mappings: list[tuple[int, int]]) -> None:
        self.url = url
        self.mappings = mappings
        self.next_request = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            session = await SpdySession.connect_port_forward(self.url)
        except (UpgradeError, OSError) as e:
            print(f"crispy: port-forward: {e}", file=sys.stderr)
            return 1
        servers: list[asyncio.Server] = []
        try:
            for local, remote in self.mappings:
                try:
                    server = await asyncio.start_server(
                        functools.partial(self.accept, session, remote),
                        LISTEN_HOST,
                        local,
                    )
                except OSError as e:
                    print(
                        f"crispy: cannot listen on {LISTEN_HOST}:{local}: {e.strerror}",
                        file=sys.stderr,
                    )
                    return 1
                servers.append(server)
                bound = server.sockets[0].getsockname()[1]
                print(f"Forwarding from {LISTEN_HOST}:{bound} -> {remote}", flush=True)
            stopped = asyncio.create_task(stop.wait())
            died = asyncio.create_task(session.closed.wait())
            await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            died.cancel()
            if not stop.is_set():
                print(
                    f"crispy: port-forward: lost the streaming session: "
                    f"{session.error or 'closed'}",
                    file=sys.stderr,
                )
                return 1
            return 0
        finally:
            for server in servers:
                server.close()
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            await session.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def accept(
        self,
        session: SpdySession,
        remote: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.create_task(self.forward(session, remote, reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def forward(
        self,
        session: SpdySession,
        remote: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One local connection: client-go's error stream, then the data stream."""
        request_id = self.next_request
        self.next_request += 1
        base = {"port": str(remote), "requestid": str(request_id)}
        try:
            error = await session.open({"streamtype": "error", **base})
            await error.close()  # client-go never writes to the error stream
            data = await session.open({"streamtype": "data", **base})
        except (ConnectionError, OSError) as e:
            print(f"crispy: port-forward to {remote}: {e}", file=sys.stderr)
            writer.close()
            return

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await reader.read(65536):
                    await data.write(chunk)
                await data.close()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await data.read():
                    writer.write(chunk)
                    await writer.drain()

        async def errors() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                message = (await error.read_all()).decode("utf-8", "replace").strip()
                if message:
                    print(
                        f"crispy: port-forward to {remote} (request {request_id}): {message}",
                        file=sys.stderr,
                        flush=True,
                    )

        up = asyncio.create_task(upstream())
        try:
            await asyncio.gather(downstream(), errors())
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            if not data.fin and not session.closed.is_set():
                with contextlib.suppress(ConnectionError, OSError):
                    await data.reset(5)  # CANCEL: the local side went away first
            session.forget(error)
            session.forget(data)
