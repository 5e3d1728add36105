"""A loopback HTTP reverse proxy that injects faults between a puller and a test registry.

The proxy forwards every request to its upstream (streaming bodies both ways, Range and
Location included) and, on request, breaks matching responses: cut them short, flip a byte,
drip them slowly, delay or drop them, answer another status, or go away entirely.  Every
request is logged with the body bytes actually sent, so tests can check what a client
re-fetched after a failure.

It runs aiohttp (server and client) on an event loop in a background thread, so it can be
driven from synchronous tests and sits in front of a client that uses its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .loopback import LoopbackServer
from .registry import Registry

T = TypeVar("T")

STOP_TIMEOUT = 10.0
DRIP_INTERVAL = 0.05  # seconds between slow-drip writes
# RFC 9110 7.6.1 hop-by-hop headers: they describe one connection, so never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Without these aiohttp's client would add headers the real client never sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


# -- a background event loop -----------------------------------------------------------------


class BackgroundLoop:
    """An asyncio loop running in a daemon thread, for servers that live inside the tests."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def serving(cls, name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> BackgroundLoop:
        """A loop that has run `start()`; if that fails, the loop is gone too."""
        bg = cls(name)
        try:
            bg.run(start())
        except BaseException:
            bg.stop()
            raise
        return bg

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result from this (another) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel whatever still runs, stop the loop, join the thread and close the loop."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.run(_cancel_other_tasks(), STOP_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_other_tasks() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- faults and the log ----------------------------------------------------------------------

FaultKind = Literal["status", "drop", "delay", "range", "cut", "corrupt", "slow", "hold"]
# "status", "drop", "delay" and "range" act before forwarding; body faults alter a 200/206
# body.
BODY_FAULTS = ("cut", "corrupt", "slow", "hold")


@dataclass
class Fault:
    """One armed fault.  ``match`` is a substring of the request's path+query (a digest, a
    repo name, "/blobs/"; "" matches all); ``remaining`` counts the requests it still applies
    to (None: every one); ``hits`` counts those it has applied to."""

    kind: FaultKind
    match: str
    method: str | None
    remaining: int | None
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    nbytes: int = 0
    offset: int | None = None
    rate: float = 0.0
    seconds: float = 0.0
    range: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return self.match in path and (self.method is None or self.method == method)


@dataclass
class LogEntry:
    """One request through the proxy.  Entries are added when a request arrives and updated
    while its response streams, so ``done`` is False for one still in flight."""

    method: str
    path: str  # path + query
    range: str | None  # the request's Range header
    headers: dict[str, str]  # the request's headers
    started: float = field(default_factory=time.monotonic)
    status: int | None = None  # sent to the client; None when no response was sent
    content_length: int | None = None  # body length promised (0 for HEAD, 204, 304)
    bytes_sent: int = 0  # response body bytes written to the client
    fault: FaultKind | None = None  # the fault applied last (a delay may precede another)
    error: str | None = None  # why the response was not completed, if it was not
    done: bool = False
    finished: float | None = None

    @property
    def complete(self) -> bool:
        """The whole promised body went out (without a promised length: the response
        finished without error)."""
        if self.error is not None or self.status is None:
            return False
        if self.content_length is None:
            return self.done
        return self.bytes_sent == self.content_length


# -- the proxy -------------------------------------------------------------------------------


class FaultProxy(LoopbackServer):
    """A reverse proxy on 127.0.0.1 (free port) in front of ``upstream`` (a Registry or an
    ``http://127.0.0.1:PORT`` URL).  Fault setters may be called from any thread at any
    time; each applies to requests that start after it is set."""

    def __init__(self, upstream: Registry | str, *, name: str = "fault-proxy") -> None:
        self.upstream = (upstream.url if isinstance(upstream, Registry) else upstream).rstrip("/")
        self.name = name
        self.port: int | None = None
        self.log: list[LogEntry] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._bg: BackgroundLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._bg = BackgroundLoop.serving(self.name, self._start)
        return self

    async def _start(self) -> None:
        # limit=0: concurrent client requests each get their own upstream connection.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay bytes exactly as the registry sent them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=SKIP_AUTO_HEADERS,
            trust_env=False,  # never route loopback traffic through an http_proxy
        )
        self._server = web.Server(self._handle, access_log=None)
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        assert self._server is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, "127.0.0.1", port, reuse_address=True, backlog=256
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])

    async def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._server is not None:
            # Established keep-alive connections would otherwise keep "up" clients talking.
            for conn in list(self._server.connections):
                conn.force_close()

    async def _stop(self) -> None:
        await self._close_listener()
        if self._server is not None:
            await self._server.shutdown(1.0)
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        if self._bg is None:
            return
        try:
            self._bg.run(self._stop(), STOP_TIMEOUT)
        finally:
            self._bg.stop()
            self._bg = None
            self.port = None

    # -- "registry down" ---------------------------------------------------------------------

    def down(self) -> None:
        """Stop listening and close every open connection: new connections are refused."""
        assert self._bg is not None
        self._bg.run(self._close_listener())

    def up(self) -> None:
        """Listen again, on the same port (references to :attr:`host` stay valid)."""
        assert self._bg is not None and self.port is not None
        if self._listener is None:
            self._bg.run(self._listen(self.port))

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # -- fault setters -----------------------------------------------------------------------

    def _arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        match: str,
        status: int = 503,
        *,
        times: int | None = 1,
        method: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer ``status`` instead of forwarding (default body: a registry-style error)."""
        if body is None:
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by fault proxy"}]}'
            headers = {"Content-Type": "application/json", **(headers or {})}
        return self._arm(
            Fault("status", match, method, times, status=status, body=body, headers=headers or {})
        )

    def drop(self, match: str, *, times: int | None = 1, method: str | None = None) -> Fault:
        """Close the connection without answering."""
        return self._arm(Fault("drop", match, method, times))

    def delay(
        self, match: str, seconds: float, *, times: int | None = 1, method: str | None = None
    ) -> Fault:
        """Hold the request ``seconds`` before forwarding it (no response headers meanwhile)."""
        return self._arm(Fault("delay", match, method, times, seconds=seconds))

    def cut_after(
        self, match: str, nbytes: int, *, times: int | None = 1, method: str | None = "GET"
    ) -> Fault:
        """Send the headers and ``nbytes`` of a 200/206 body, then close the connection.  A
        body no longer than ``nbytes`` goes out whole (the fault still counts as used)."""
        return self._arm(Fault("cut", match, method, times, nbytes=nbytes))

    def corrupt(
        self,
        match: str,
        *,
        offset: int | None = None,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> Fault:
        """Flip (xor 0xff) the byte at ``offset`` of a 200/206 body (default: its middle),
        keeping Content-Length; the transfer itself completes normally."""
        return self._arm(Fault("corrupt", match, method, times, offset=offset))

    def slow(
        self,
        match: str,
        bytes_per_second: float,
        *,
        after: int = 0,
        times: int | None = None,
        method: str | None = "GET",
    ) -> Fault:
        """Send ``after`` bytes of a 200/206 body at full speed, then drip the rest at
        ``bytes_per_second`` (0: stall until the client gives up)."""
        return self._arm(Fault("slow", match, method, times, rate=bytes_per_second, nbytes=after))

    def hold_end(self, match: str, *, times: int | None = 1, method: str | None = "GET") -> Fault:
        """Send the whole of a 200/206 body, but chunked and without its final chunk, then
        stall until the client hangs up: every byte arrived, the response never ends."""
        return self._arm(Fault("hold", match, method, times))

    def rewrite_range(
        self, match: str, value: str | None, *, times: int | None = 1, method: str | None = "GET"
    ) -> Fault:
        """Forward the request with its Range header (if it has one) replaced by ``value``,
        or dropped when None: a registry that ignores Range (200, whole body) or answers
        another range than the one asked for."""
        return self._arm(Fault("range", match, method, times, range=value))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Disarm every fault, forget the log and listen again if :meth:`down`."""
        self.clear_faults()
        with self._lock:
            self.log.clear()
        if self._bg is not None and self._listener is None:
            self.up()

    def _take(self, kinds: tuple[str, ...], method: str, path: str) -> Fault | None:
        """The first armed fault of ``kinds`` matching the request, now counted as used."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    fault.hits += 1
                    return fault
        return None

    # -- log queries -------------------------------------------------------------------------

    def requests(self, match: str = "", method: str | None = None) -> list[LogEntry]:
        with self._lock:
            entries = list(self.log)
        return [e for e in entries if match in e.path and method in (None, e.method)]

    def bytes_sent(self, match: str = "", method: str | None = "GET") -> int:
        """Body bytes sent for matching requests, summed over retries."""
        return sum(e.bytes_sent for e in self.requests(match, method))

    def reference(self, repo: str, ref: str) -> str:
        """An image reference through the proxy: ``host/repo:tag`` or ``host/repo@digest``."""
        sep = "@" if ":" in ref else ":"
        return f"{self.host}/{repo}{sep}{ref}"

    # -- request handling --------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        entry = LogEntry(
            request.method, request.path_qs, request.headers.get("Range"), dict(request.headers)
        )
        with self._lock:
            self.log.append(entry)
        try:
            return await self._proxy(request, entry)
        finally:
            entry.done = True
            entry.finished = time.monotonic()

    async def _proxy(self, request: web.BaseRequest, entry: LogEntry) -> web.StreamResponse:
        method, path = request.method, request.path_qs
        fault = self._take(("delay",), method, path)
        if fault is not None:
            entry.fault = fault.kind
            await asyncio.sleep(fault.seconds)  # then forward, or apply another pre-fault
        fault = self._take(("status", "drop"), method, path)
        if fault is not None and fault.kind == "drop":
            entry.fault, entry.error = fault.kind, "dropped"
            _close(request)
            return web.Response()  # never sent: the transport is closing
        if fault is not None:
            entry.fault, entry.status, entry.content_length = fault.kind, fault.status, 0
            if method != "HEAD":
                entry.content_length = entry.bytes_sent = len(fault.body)
            return web.Response(status=fault.status, body=fault.body, headers=fault.headers)

        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        headers.popall("Host", None)
        if "Range" in headers:
            fault = self._take(("range",), method, path)
            if fault is not None:
                entry.fault = fault.kind
                headers.popall("Range")
                if fault.range is not None:
                    headers["Range"] = fault.range
        assert self._session is not None
        try:
            upstream = await self._session.request(
                method,
                self.upstream + path,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            entry.status, entry.error = 502, f"upstream: {exc!r}"
            return web.Response(status=502, text=f"fault proxy: upstream failed: {exc!r}\n")
        try:
            return await self._relay(request, upstream, entry)
        finally:
            # A body left half-read (cut, client gone) must not go back to the pool.
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, entry: LogEntry
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() in HOP_BY_HOP:
                continue
            if key.lower() == "location" and value.startswith(self.upstream):
                value = self.url + value[len(self.upstream) :]
            resp.headers.add(key, value)
        bodiless = request.method == "HEAD" or upstream.status in (204, 304)
        entry.status = upstream.status
        entry.content_length = 0 if bodiless else upstream.content_length
        fault = None
        if upstream.status in (200, 206) and not bodiless:
            fault = self._take(BODY_FAULTS, request.method, request.path_qs)
            if fault is not None:
                entry.fault = fault.kind
        if fault is not None and fault.kind == "hold":
            resp.headers.popall("Content-Length", None)
            resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if bodiless:
                await resp.write_eof()
                return resp
            await resp.write(b"")  # flush the headers now, even if the body stalls
            if await self._copy_body(request, upstream, resp, entry, fault):
                await resp.write_eof()
        except ConnectionError as exc:
            entry.error = f"client: {exc!r}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Pass a broken upstream body on as a broken response, not a short "success".
            entry.error = f"upstream: {exc!r}"
            _close(request)
        return resp

    async def _copy_body(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        resp: web.StreamResponse,
        entry: LogEntry,
        fault: Fault | None,
    ) -> bool:
        """Stream the body, applying ``fault``; False when the connection was cut."""
        kind = fault.kind if fault else None
        flip_at = -1
        if fault is not None and kind == "corrupt":
            flip_at = fault.offset if fault.offset is not None else (entry.content_length or 0) // 2
        drip_start: float | None = None
        dripped = 0
        pos = 0
        while chunk := await upstream.content.readany():
            if fault is not None and kind == "cut" and pos + len(chunk) >= fault.nbytes:
                entry.error = f"cut after {fault.nbytes} bytes"
                await self._write(resp, chunk[: fault.nbytes - pos], entry)
                _close(request)
                return False
            if pos <= flip_at < pos + len(chunk):
                mutable = bytearray(chunk)
                mutable[flip_at - pos] ^= 0xFF
                chunk = bytes(mutable)
            if fault is None or kind != "slow" or pos + len(chunk) <= fault.nbytes:
                await self._write(resp, chunk, entry)
                pos += len(chunk)
                continue
            assert fault is not None
            fast = max(0, fault.nbytes - pos)
            await self._write(resp, chunk[:fast], entry)
            rest = memoryview(chunk)[fast:]
            pos += len(chunk)
            if fault.rate <= 0:
                await _stall(request)
            step = max(1, int(fault.rate * DRIP_INTERVAL))
            for i in range(0, len(rest), step):
                if drip_start is None:
                    drip_start = time.monotonic()
                piece = bytes(rest[i : i + step])
                await self._write(resp, piece, entry)
                dripped += len(piece)
                # Pace against the start so per-write overheads don't add up.
                wait = drip_start + dripped / fault.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
        if kind == "hold":
            entry.error = "held: the response never ended"
            await _stall(request)
        return True

    @staticmethod
    async def _write(resp: web.StreamResponse, data: bytes, entry: LogEntry) -> None:
        if data:
            # Counted first: write() hands the data to the transport before it yields, so
            # the log is never behind what a client may already have received.
            entry.bytes_sent += len(data)
            await resp.write(data)


def _close(request: web.BaseRequest) -> None:
    """Close the client connection once what was written is flushed (FIN, not RST)."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _stall(request: web.BaseRequest) -> None:
    """Send nothing until the client hangs up (then raise, like a failed write would)."""
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(DRIP_INTERVAL)
    raise ConnectionResetError("client went away during a stall")
