"""Port-forward over SPDY/3.1 (``X-Stream-Protocol-Version: portforward.k8s.io``).

After the upgrade the client opens streams in pairs, each with headers ``streamtype`` ("error"
or "data"), ``port`` and ``requestid`` (client-go opens the error stream first). Each complete
pair is one TCP connection to localhost:<port> in the pod's network namespace; bytes are
copied both ways. A failed dial is reported as text on the error stream, as kubelet does;
both streams are half-closed (FIN) when the forward ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from crispy.streaming.dial import dial_in_netns
from crispy.streaming.server import Request, spdy_upgrade
from crispy.streaming.session import SessionClosed, SpdySession, SpdyStream, StreamReset
from crispy.streaming.spdy import CANCEL

log = logging.getLogger("crispy.streaming")

KIND = "portforward"
PROTOCOL = "portforward.k8s.io"
PAIR_TIMEOUT = 30.0  # kubelet's stream creation timeout
COPY_CHUNK = 32 * 1024


@dataclass(frozen=True)
class PortForwardTarget:
    pod_id: str
    netns: str  # "" for a host-network pod


def _header(stream: SpdyStream, name: str) -> str | None:
    values = stream.headers.get(name)
    return values[0] if values else None


class _Pair:
    def __init__(self) -> None:
        self.error: SpdyStream | None = None
        self.data: SpdyStream | None = None
        self.timer: asyncio.TimerHandle | None = None


async def serve(
    target: PortForwardTarget,
    protocol: str,
    request: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """The streaming server's handler for ``/portforward/<token>``."""
    await run_session(target, await spdy_upgrade(protocol, reader, writer))


async def run_session(target: PortForwardTarget, session: SpdySession) -> None:
    """Serve stream pairs on an upgraded (not yet started) ``session`` until it ends, then
    close it. Shared by plain SPDY and SPDY tunnelled through WebSocket."""
    session.start()
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()

    def expire(request_id: str) -> None:
        pair = pairs.pop(request_id, None)
        if pair is None:
            return
        for s in (pair.error, pair.data):
            if s is not None:
                s.reset(CANCEL)

    try:
        while True:
            try:
                stream = await session.accept()
            except SessionClosed:
                break
            request_id = _header(stream, "requestid")
            kind = _header(stream, "streamtype")
            if request_id is None or kind not in ("error", "data"):
                log.debug("port-forward: bad stream headers %s", stream.headers)
                stream.reset(CANCEL)
                continue
            pair = pairs.setdefault(request_id, _Pair())
            if getattr(pair, kind) is not None:
                stream.reset(CANCEL)  # a second stream of one type for one request
                continue
            setattr(pair, kind, stream)
            if pair.error is None or pair.data is None:
                if pair.timer is None:
                    pair.timer = asyncio.get_running_loop().call_later(
                        PAIR_TIMEOUT, expire, request_id
                    )
                continue
            del pairs[request_id]
            if pair.timer is not None:
                pair.timer.cancel()
            task = asyncio.create_task(_forward(target, pair.error, pair.data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for pair in pairs.values():
            if pair.timer is not None:
                pair.timer.cancel()
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await session.close()


async def _forward(target: PortForwardTarget, error: SpdyStream, data: SpdyStream) -> None:
    port_text = _header(data, "port") or ""
    try:
        try:
            port = int(port_text, 10)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            await _fail(error, f"invalid port {port_text!r}")
            return
        try:
            r, w = await dial_in_netns(target.netns, port)
        except (OSError, ValueError) as e:
            await _fail(error, dial_error(target, port, e))
            return
        try:
            await _copy(data, r, w)
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
    except (SessionClosed, StreamReset, ConnectionError, OSError) as e:
        log.debug("port-forward to %s ended: %s", target.pod_id, e)
    finally:
        with contextlib.suppress(SessionClosed, StreamReset, ConnectionError, OSError):
            await data.close()
        with contextlib.suppress(SessionClosed, StreamReset, ConnectionError, OSError):
            await error.close()


def dial_error(target: PortForwardTarget, port: int, e: Exception) -> str:
    """kubelet's text for a forward whose connection failed (both transports write it)."""
    return f"error forwarding port {port} to pod {target.pod_id}, uid : {e}"


async def _fail(error: SpdyStream, message: str) -> None:
    log.info("port-forward: %s", message)
    await error.write(message.encode())


async def _copy(
    data: SpdyStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Client → pod until the client's FIN (then shut the socket's write side); pod → client
    until the pod closes (then FIN). Ends when the pod side is done or either side fails."""

    async def upstream() -> None:
        while chunk := await data.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def downstream() -> None:
        while chunk := await reader.read(COPY_CHUNK):
            await data.write(chunk)
        await data.close()

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up in done and up.exception() is None and not down.done():
            await down  # the client half-closed: the pod may still answer
    finally:
        for task in (up, down):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
