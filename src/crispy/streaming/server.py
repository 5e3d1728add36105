"""The streaming HTTP server: single-use URLs that CRI calls hand out, upgraded to SPDY/3.1
or WebSocket.

A CRI call (Exec, Attach, PortForward) registers what the session is for and gets a token;
the client (kubelet's proxy, crictl, kubectl via the API server) connects to
``http(s)://<address>:<port>/<kind>/<token>`` and asks for ``Upgrade: SPDY/3.1`` (with the
stream protocols it speaks in ``X-Stream-Protocol-Version``) or ``Upgrade: websocket`` (with
``Sec-WebSocket-Protocol``). A token works once and only for :data:`TOKEN_TTL` seconds, like
kubelet's request cache. TLS is used when a certificate and key are configured.

The HTTP/1.1 part is deliberately tiny and strict: one request per connection, request line
and headers at most :data:`MAX_HEADER` bytes read within :data:`HEADER_TIMEOUT` seconds, no
body. Anything else than an upgrade gets a short error response and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from crispy import metrics
from crispy.streaming.session import SpdySession

log = logging.getLogger("crispy.streaming")

TOKEN_TTL = 60.0
IDLE_TIMEOUT = 4 * 3600.0  # kubelet's and containerd's stream_idle_timeout
MAX_HEADER = 16 * 1024
HEADER_TIMEOUT = 10.0
SPDY = "SPDY/3.1"


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    raw: bytes = b""  # the request head as received (a WebSocket handshake parses it again)

    def values(self, name: str) -> list[str]:
        """Every comma-separated token of header ``name`` (case-insensitive), stripped."""
        out = []
        for value in self.headers.get(name.lower(), []):
            out += [v.strip() for v in value.split(",") if v.strip()]
        return out


SpdyHandler = Callable[
    [Any, str, Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
"""Serves one SPDY upgrade: ``(target, protocol, request, reader, writer)``; it writes the 101
(:func:`upgrade_response`). ``protocol`` is the negotiated X-Stream-Protocol-Version, "" when
the client offered none (a legacy client)."""

WebSocketHandler = Callable[
    [Any, Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]
"""Serves one WebSocket upgrade: ``(target, request, reader, writer)``; it does the handshake
from ``request.raw`` and negotiates ``Sec-WebSocket-Protocol`` itself."""


@dataclass(frozen=True)
class Route:
    protocols: tuple[str, ...]  # SPDY stream protocols, in no particular order
    spdy: SpdyHandler
    websocket: WebSocketHandler | None


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the configured certificate chain and key (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def streaming_tls(cfg: Any) -> ssl.SSLContext | None:
    """The streaming server's TLS context from ``[streaming]`` config, None for plain http."""
    s = cfg.streaming
    if not s.tls_cert_file:
        return None
    return tls_context(s.tls_cert_file, s.tls_key_file)


def parse_request(head: bytes) -> Request:
    """Request line and headers (``head`` ends with the blank line); BadRequest if malformed."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "Bad Request", "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        raise BadRequest(400, "Bad Request", "malformed request line")
    req = Request(parts[0], parts[1], parts[2], raw=head)
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest(400, "Bad Request", "malformed header line")
        req.headers.setdefault(name.lower(), []).append(value.strip())
    return req


def response(
    status: int, reason: str, headers: dict[str, str] | None = None, body: str = ""
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if status != 101:
        data = body.encode()
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}"]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def wants_websocket(req: Request) -> bool:
    return "websocket" in [v.lower() for v in req.values("upgrade")]


def check_upgrade(req: Request, protocols: Sequence[str]) -> str:
    """The request must ask for ``Upgrade: SPDY/3.1``; returns the negotiated stream protocol.

    Like kubelet's ``httpstream.Handshake``: the first protocol in the *client's* list that
    the server supports; "" when the client offered none; 403 when nothing matches.
    """
    if req.method not in ("GET", "POST"):
        raise BadRequest(400, "Bad Request", f"method {req.method} not allowed")
    if "upgrade" not in [v.lower() for v in req.values("connection")]:
        raise BadRequest(
            400, "Bad Request", "unable to upgrade: missing upgrade headers in request"
        )
    if SPDY.lower() not in [v.lower() for v in req.values("upgrade")]:
        raise BadRequest(
            400, "Bad Request", f"unable to upgrade: protocol {req.values('upgrade')} not supported"
        )
    offered = req.values("x-stream-protocol-version")
    if not offered:
        return ""
    for name in offered:
        if name in protocols:
            return name
    # kubelet's httpstream.Handshake answers a failed negotiation with 403.
    raise BadRequest(
        403,
        "Forbidden",
        "unable to upgrade: unable to negotiate protocol: "
        f"client supports {offered}, server supports {list(protocols)}",
    )


async def spdy_upgrade(
    protocol: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> SpdySession:
    """Answer the upgrade with 101 and return the (not yet started) SPDY session on it."""
    writer.write(upgrade_response(protocol))
    await writer.drain()
    return SpdySession(reader, writer)


def upgrade_response(protocol: str) -> bytes:
    headers = {"Connection": "Upgrade", "Upgrade": SPDY}
    if protocol:
        headers["X-Stream-Protocol-Version"] = protocol
    return response(101, "Switching Protocols", headers)


class StreamingServer:
    """HTTP server handing single-use, expiring URLs to per-kind handlers."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        ttl: float = TOKEN_TTL,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.address = address
        self.port = port
        self.ttl = ttl
        self.idle_timeout = idle_timeout  # 0: never
        self.ssl_context = ssl_context
        self._tokens: dict[str, tuple[str, Any, float]] = {}
        self._routes: dict[str, Route] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    def handle(
        self,
        kind: str,
        protocols: Sequence[str],
        spdy: SpdyHandler,
        websocket: WebSocketHandler | None = None,
    ) -> None:
        """Serve ``/<kind>/<token>``: SPDY upgrades negotiating one of ``protocols`` with
        ``spdy``, WebSocket upgrades with ``websocket`` (if given)."""
        self._routes[kind] = Route(tuple(protocols), spdy, websocket)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.address,
            self.port,
            limit=MAX_HEADER,
            ssl=self.ssl_context,
            ssl_handshake_timeout=HEADER_TIMEOUT if self.ssl_context else None,
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(self._conns, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # --- tokens -----------------------------------------------------------------------

    def register(self, kind: str, target: Any) -> str:
        """A fresh single-use token for ``kind`` (e.g. "portforward") serving ``target``."""
        now = time.monotonic()
        for tok in [t for t, (_, _, exp) in self._tokens.items() if exp <= now]:
            del self._tokens[tok]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (kind, target, now + self.ttl)
        return token

    def url(self, kind: str, token: str) -> str:
        return f"{self.base_url}/{kind}/{token}"

    def _consume(self, kind: str, token: str) -> Any:
        entry = self._tokens.pop(token, None)
        if entry is None:
            return None
        k, target, expires = entry
        if k != kind or expires <= time.monotonic():
            if k != kind:
                self._tokens[token] = entry  # not this URL's token: leave it usable
            return None
        return target

    # --- connections ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels the connection's own top-level task: re-raising would only make
            # asyncio log the cancellation as an error in start_server's callback.
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEADER_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, ValueError):
                raise BadRequest(
                    431, "Request Header Fields Too Large", "request head too large"
                ) from None
            except TimeoutError:
                raise BadRequest(408, "Request Timeout", "request head timed out") from None
            req = parse_request(head)
            segments = req.path.split("?", 1)[0].strip("/").split("/")
            if len(segments) != 2 or segments[0] not in self._routes:
                raise BadRequest(404, "Not Found", "not found")
            kind, token = segments
            route = self._routes[kind]
            websocket = wants_websocket(req)
            protocol = ""
            if websocket:
                if route.websocket is None:
                    raise BadRequest(400, "Bad Request", f"{kind} is not served over WebSocket")
                if req.method != "GET":
                    raise BadRequest(400, "Bad Request", "a WebSocket upgrade must be a GET")
            else:
                protocol = check_upgrade(req, route.protocols)
            target = self._consume(kind, token)
            if target is None:
                raise BadRequest(404, "Not Found", "unknown or expired token")
        except BadRequest as e:
            writer.write(response(e.status, e.reason, body=str(e) + "\n"))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            return
        transport = "websocket" if websocket else "spdy"
        metrics.record_stream(kind, transport, +1)
        clock = Activity(reader, writer)
        watch = asyncio.create_task(self._watch_idle(clock, writer, kind))
        r, w = cast(asyncio.StreamReader, clock), cast(asyncio.StreamWriter, clock.writer)
        try:
            if websocket:
                assert route.websocket is not None
                await route.websocket(target, req, r, w)
            else:
                await route.spdy(target, protocol, req, r, w)
        finally:
            watch.cancel()
            metrics.record_stream(kind, transport, -1)

    async def _watch_idle(self, clock: Activity, writer: asyncio.StreamWriter, kind: str) -> None:
        """Close a session that moved no byte either way for ``idle_timeout`` seconds."""
        if self.idle_timeout <= 0:
            return
        while True:
            left = clock.last + self.idle_timeout - time.monotonic()
            if left <= 0:
                log.info("%s session idle for %gs: closing it", kind, self.idle_timeout)
                writer.close()
                return
            await asyncio.sleep(left)


class Activity:
    """The reader of an upgraded connection, noting when bytes last moved either way.

    It stands in for the StreamReader (``read``) and, through :attr:`writer`, the
    StreamWriter (``write``) the protocol handlers are given; anything else goes straight
    to the real ones.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self.last = time.monotonic()
        self.writer = _ActiveWriter(writer, self)

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        self.last = time.monotonic()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _ActiveWriter:
    def __init__(self, writer: asyncio.StreamWriter, clock: Activity) -> None:
        self._writer = writer
        self._clock = clock

    def write(self, data: bytes) -> None:
        self._clock.last = time.monotonic()
        self._writer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)
