"""The client side of remotecommand (exec and attach), as client-go speaks it.

A CRI Exec or Attach call returns a single-use URL; :meth:`RemoteCommand.connect` upgrades it
over one of two transports:

* ``spdy`` (client-go's ``NewSPDYExecutor``): POST with ``Upgrade: SPDY/3.1`` offering
  :data:`SPDY_PROTOCOLS`; then one SPDY stream per requested stdio, each opened with a
  ``streamType`` header, in client-go's order: ``error`` first, then ``stdin``, ``stdout``,
  ``stderr`` (never with a tty) and ``resize`` (v3 and later, tty only). Stdin EOF is a FIN
  on the stdin stream. A server that names no protocol is spoken to as ``channel.k8s.io``
  (v1), like client-go does.
* ``websocket`` (client-go's ``NewWebSocketExecutor``; aiohttp's client): GET with
  ``Sec-WebSocket-Protocol`` offering :data:`WEBSOCKET_PROTOCOLS`; every message carries a
  channel number (stdin 0, stdout 1, stderr 2, error 3, resize 4) framed by
  :mod:`crispy.streaming.channels`. Only ``v5.channel.k8s.io`` can signal stdin EOF (the
  ``[255, 0]`` close message); with older protocols the command sees EOF only when the
  connection ends, so an ``-i`` command that waits for EOF needs v5 (or SPDY).

The error stream / channel ends the session with the command's status: a ``metav1.Status``
JSON for v4 and later (:func:`decode_status` has client-go's ``errorDecoderV4`` rules), plain
text for older protocols (non-empty means an error). Exit statuses come back as
``(exit_code, error)``: ``(n, "")`` when the command ran and exited ``n``, and
``(NO_EXIT_CODE, message)`` when the runtime reported an error instead of an exit status (the
command may not have run at all).

Reading is backpressured: a channel holds at most about a megabyte of unread data before the
connection stops being read, so stdout and stderr should be read concurrently (as :func:`run`
does). The streaming URL must be used with the same stdin/stdout/stderr/tty flags as the CRI
request that returned it: the server waits for exactly the streams it was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from crispy.streaming import channels
from crispy.streaming.client import ClientStream, SessionClosed, SpdySession, UpgradeError
from crispy.streaming.status import (
    CAUSE_EXIT_CODE,
    MAX_TERMINAL_DIMENSION,
    REASON_NON_ZERO_EXIT_CODE,
    STATUS_FAILURE,
    STATUS_SUCCESS,
)

TRANSPORTS = ("spdy", "websocket")
# client-go's offers, in its order (spdy.go streamExecutor.Stream / websocket executors).
SPDY_PROTOCOLS: tuple[str, ...] = (
    channels.V4_CHANNEL,
    channels.V3_CHANNEL,
    channels.V2_CHANNEL,
    channels.CHANNEL,
)
WEBSOCKET_PROTOCOLS: tuple[str, ...] = (
    channels.V5_CHANNEL,
    channels.V4_CHANNEL,
    channels.V4_BASE64_CHANNEL,
    channels.BASE64_CHANNEL,
    channels.CHANNEL,
)
# Resize streams exist from v3 on over SPDY (v1 and v2 have none).
SPDY_RESIZE_PROTOCOLS = frozenset({channels.V4_CHANNEL, channels.V3_CHANNEL})

NO_EXIT_CODE = -1  # the runtime reported an error instead of the command's exit status

STDIN, STDOUT, STDERR, ERROR, RESIZE = "stdin", "stdout", "stderr", "error", "resize"
CHUNK = 32 * 1024  # stdin bytes per WebSocket message
MAX_BUFFERED = 1 << 20  # unread bytes per WebSocket channel before the socket stops being read
MAX_MESSAGE = 32 << 20  # largest WebSocket message accepted
MAX_BODY = 64 * 1024
CONNECT_TIMEOUT = 30.0

# kubelet's v1-v3 error text for a non-zero exit (apierrors' message of the v4 Status).
_LEGACY_EXIT = re.compile(r"^command terminated with non-zero exit code: .*exit code (\d+)\s*$")


class RemoteError(Exception):
    """The session could not be set up or the server broke the protocol.

    ``status`` and ``body`` are the HTTP status and response body of a refused upgrade.
    """

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# -- pure protocol logic -----------------------------------------------------------------------


def offers(transport: str, protocols: Sequence[str] | None = None) -> tuple[str, ...]:
    """The protocols to offer, in order: client-go's by default, else ``protocols`` checked."""
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
    known = SPDY_PROTOCOLS if transport == "spdy" else channels.EXEC_PROTOCOLS
    if protocols is None:
        return SPDY_PROTOCOLS if transport == "spdy" else WEBSOCKET_PROTOCOLS
    chosen = tuple(protocols)
    if not chosen:
        raise ValueError("offer at least one protocol")
    for name in chosen:
        if name not in known or (transport == "websocket" and not name):
            raise ValueError(f"{name!r} is not a {transport} remotecommand protocol")
    return chosen


def spdy_streams(protocol: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> list[str]:
    """The SPDY streams client-go opens, in its order, for a negotiated ``protocol``."""
    kinds = [ERROR]
    if stdin:
        kinds.append(STDIN)
    if stdout:
        kinds.append(STDOUT)
    if stderr and not tty:
        kinds.append(STDERR)
    if tty and protocol in SPDY_RESIZE_PROTOCOLS:
        kinds.append(RESIZE)
    return kinds


def resize_message(width: int, height: int) -> bytes:
    """One ``remotecommand.TerminalSize``, as client-go's json.Encoder writes it."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"terminal {name} must be an int, got {value!r}")
        if not 0 < value <= MAX_TERMINAL_DIMENSION:
            raise ValueError(f"terminal {name} {value} out of range 1..{MAX_TERMINAL_DIMENSION}")
    return json.dumps({"Width": width, "Height": height}, separators=(",", ":")).encode() + b"\n"


def decode_status(protocol: str, message: bytes) -> tuple[int, str]:
    """``(exit_code, error)`` from everything the error stream carried.

    v4 and later (a metav1.Status, client-go's errorDecoderV4): ``Success`` is ``(0, "")``;
    ``Failure``/``NonZeroExitCode`` is ``(code, "")`` with the code from the ``ExitCode``
    cause; any other ``Failure`` is ``(NO_EXIT_CODE, message)``. An empty stream, which a
    conforming server never leaves, is ``(NO_EXIT_CODE, ...)`` too. RemoteError for JSON that
    is not such a Status.

    v1-v3 (text): empty is success, anything else the error. kubelet's text for a non-zero
    exit ("... exit code N") is recognised and given back as ``(N, "")``.
    """
    if not channels.protocol(protocol).status_errors:
        text = message.decode("utf-8", "replace").strip()
        if not text:
            return 0, ""
        if m := _LEGACY_EXIT.match(text):
            code = int(m.group(1))
            if code <= 255:
                return code, ""
        return NO_EXIT_CODE, text
    if not message.strip():
        return NO_EXIT_CODE, "the streaming server ended the session without an exit status"
    try:
        status = json.loads(message)
    except (ValueError, UnicodeDecodeError) as e:
        raise RemoteError(f"error stream protocol error: {e} in {message[:200]!r}") from None
    if not isinstance(status, dict):
        raise RemoteError(f"error stream protocol error: not a Status: {message[:200]!r}")
    state = status.get("status")
    if state == STATUS_SUCCESS:
        return 0, ""
    if state != STATUS_FAILURE:
        raise RemoteError(f"error stream protocol error: unknown status {state!r}")
    if status.get("reason") == REASON_NON_ZERO_EXIT_CODE:
        details = status.get("details")
        if not isinstance(details, dict):
            raise RemoteError("error stream protocol error: details must be set")
        for cause in details.get("causes") or []:
            if not isinstance(cause, dict) or cause.get("reason") != CAUSE_EXIT_CODE:
                continue
            value = cause.get("message")
            # strconv.ParseUint(value, 10, 8): plain decimal digits, at most 255
            if not isinstance(value, str) or not value.isascii() or not value.isdigit():
                raise RemoteError(f"error stream protocol error: invalid exit code value {value!r}")
            code = int(value)
            if code > 255:
                raise RemoteError(f"error stream protocol error: invalid exit code value {value!r}")
            return code, ""
        raise RemoteError(f"error stream protocol error: no {CAUSE_EXIT_CODE} cause given")
    message_text = status.get("message")
    text = message_text if isinstance(message_text, str) else ""
    reason = status.get("reason")
    return NO_EXIT_CODE, text or (reason if isinstance(reason, str) and reason else "failed")


def websocket_url(url: str) -> str:
    """The CRI URL (http/https) as the ws/wss URL aiohttp dials."""
    u = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
    if scheme not in ("ws", "wss") or not u.hostname:
        raise RemoteError(f"unsupported streaming URL: {url}")
    return urlunsplit((scheme, u.netloc, u.path, u.query, u.fragment))


# -- the session -------------------------------------------------------------------------------


class RemoteCommand:
    """One exec or attach session. Make it with :meth:`connect`; ``async with`` closes it."""

    protocol: str  # the negotiated stream protocol
    transport: str  # "spdy" or "websocket"

    def __init__(self, protocol: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool):
        self.protocol = protocol
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr and not tty
        self.tty = tty
        self._status: tuple[int, str] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        transport: str = "spdy",
        protocols: Sequence[str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> RemoteCommand:
        """Upgrade ``url`` and set up the streams asked for (stderr never with ``tty``).

        ``ssl`` is for https URLs (default: verify against the system CAs). RemoteError if the
        server refuses (with its HTTP status and body) or cannot be reached.
        """
        offer = offers(transport, protocols)
        flags: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "tty": tty}
        if transport == "spdy":
            return await _SpdyCommand.open(url, offer, ssl, **flags)
        return await _WebSocketCommand.open(url, offer, ssl, **flags)

    async def __aenter__(self) -> RemoteCommand:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the command (waits while the transport is backed up).

        ConnectionError once the server is gone or stopped taking stdin.
        """
        raise NotImplementedError

    async def close_stdin(self) -> None:
        """Signal EOF on stdin: a FIN over SPDY, ``[255, 0]`` over WebSocket v5. WebSocket v4
        and older have no way to say it: a no-op there (the command sees EOF when the
        connection closes)."""
        raise NotImplementedError

    async def resize(self, width: int, height: int) -> None:
        """Tell the tty its size (columns, rows). A no-op without a tty, or over SPDY v1/v2."""
        raise NotImplementedError

    async def read_stdout(self) -> bytes:
        """Some stdout bytes (waiting for them); b"" at EOF or when stdout wasn't requested."""
        raise NotImplementedError

    async def read_stderr(self) -> bytes:
        """Like :meth:`read_stdout`, for stderr (never requested with a tty)."""
        raise NotImplementedError

    async def wait(self) -> tuple[int, str]:
        """``(exit_code, error)`` once the error stream ended (see :func:`decode_status`)."""
        if self._status is None:
            self._status = await self._wait()
        return self._status

    async def _wait(self) -> tuple[int, str]:
        raise NotImplementedError

    async def close(self) -> None:
        """Drop the connection (whatever the command is doing)."""
        raise NotImplementedError


class _SpdyCommand(RemoteCommand):
    transport = "spdy"

    def __init__(self, session: SpdySession, protocol: str, **flags: bool) -> None:
        super().__init__(protocol, **flags)
        self.session = session
        self.streams: dict[str, ClientStream] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        offer: Sequence[str],
        ssl: ssl_module.SSLContext | None,
        **flags: bool,
    ) -> _SpdyCommand:
        try:
            session, protocol = await SpdySession.connect(url, offer, ssl)
        except UpgradeError as e:
            raise RemoteError(str(e), e.status, e.body) from None
        except OSError as e:
            raise RemoteError(f"cannot reach the streaming server at {url}: {e}") from None
        cmd = cls(session, protocol or channels.CHANNEL, **flags)
        kind = ERROR
        try:
            kinds = spdy_streams(
                cmd.protocol,
                stdin=cmd.stdin,
                stdout=cmd.stdout,
                stderr=cmd.stderr,
                tty=cmd.tty,
            )
            for kind in kinds:
                cmd.streams[kind] = await session.open({"streamType": kind})
        except (ConnectionError, OSError) as e:
            await session.close()
            raise RemoteError(
                f"streaming server did not take the {kind} stream: {session.error or e}"
            ) from None
        return cmd

    async def write_stdin(self, data: bytes) -> None:
        stream = self.streams.get(STDIN)
        if stream is None:
            raise ValueError("stdin was not requested")
        if stream.closed_local:
            raise ConnectionResetError("stdin already closed")
        await stream.write(data)

    async def close_stdin(self) -> None:
        stream = self.streams.get(STDIN)
        if stream is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await stream.close()

    async def resize(self, width: int, height: int) -> None:
        message = resize_message(width, height)
        stream = self.streams.get(RESIZE)
        if stream is not None:
            await stream.write(message)

    async def _read(self, kind: str) -> bytes:
        stream = self.streams.get(kind)
        if stream is None:
            return b""
        try:
            return await stream.read()
        except (SessionClosed, ConnectionResetError):
            # spdystream's reads end at EOF when the connection or the stream goes: so do ours
            return b""

    async def read_stdout(self) -> bytes:
        return await self._read(STDOUT)

    async def read_stderr(self) -> bytes:
        return await self._read(STDERR)

    async def _wait(self) -> tuple[int, str]:
        message = bytearray()
        while chunk := await self._read(ERROR):
            message += chunk
        code, error = decode_status(self.protocol, bytes(message))
        if not message and error and self.session.error:
            error = f"{error} ({self.session.error})"
        return code, error

    async def close(self) -> None:
        await self.session.close()


class _Inbox:
    """What one WebSocket channel received and nobody read yet; b"" once it ended."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ended = False
        self.readable = asyncio.Event()
        self.room = asyncio.Event()

    def put(self, data: bytes) -> None:
        self.buf += data
        self.readable.set()

    def end(self) -> None:
        self.ended = True
        self.readable.set()
        self.room.set()

    async def wait_room(self) -> None:
        while len(self.buf) > MAX_BUFFERED and not self.ended:
            self.room.clear()
            await self.room.wait()

    async def read(self) -> bytes:
        while not self.buf:
            if self.ended:
                return b""
            self.readable.clear()
            await self.readable.wait()
        data = bytes(self.buf)
        self.buf.clear()
        self.room.set()
        return data


class _WebSocketCommand(RemoteCommand):
    transport = "websocket"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        protocol: str,
        **flags: bool,
    ) -> None:
        super().__init__(protocol, **flags)
        self.http = http
        self.ws = ws
        self.framing = channels.protocol(protocol)
        self.inboxes: dict[int, _Inbox] = {channels.ERROR: _Inbox()}
        if self.stdout:
            self.inboxes[channels.STDOUT] = _Inbox()
        if self.stderr:
            self.inboxes[channels.STDERR] = _Inbox()
        self.send_lock = asyncio.Lock()
        self.stdin_closed = False
        self.lost = ""  # why the connection ended abnormally
        self.broken = ""  # a frame we could not decode
        self.pump = asyncio.create_task(self._pump())

    @classmethod
    async def open(
        cls,
        url: str,
        offer: Sequence[str],
        ssl: ssl_module.SSLContext | None,
        **flags: bool,
    ) -> _WebSocketCommand:
        target = websocket_url(url)
        http = aiohttp.ClientSession(
            # no total timeout: it would cut the session off, however long it runs
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
            raise_for_status=_refused,
        )
        try:
            ws = await http.ws_connect(
                target,
                protocols=offer,
                ssl=ssl if ssl is not None else True,
                max_msg_size=MAX_MESSAGE,
                autoping=True,
            )
        except RemoteError:
            await http.close()
            raise
        except aiohttp.WSServerHandshakeError as e:
            await http.close()
            raise RemoteError(
                f"streaming server refused the WebSocket upgrade: {e.status} {e.message}",
                e.status,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            await http.close()
            raise RemoteError(f"cannot reach the streaming server at {url}: {e}") from None
        # No Sec-WebSocket-Protocol in the answer: wsstream's unnamed binary protocol.
        protocol = ws.protocol or channels.NO_PROTOCOL
        return cls(http, ws, protocol, **flags)

    async def _pump(self) -> None:
        """Sort incoming messages into the channels until the connection ends."""
        try:
            async for msg in self.ws:
                if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    if not msg.data:
                        continue
                    try:
                        channel, payload = channels.decode(self.protocol, msg.data)
                    except ValueError as e:
                        self.broken = f"WebSocket protocol error: {e}"
                        await self.ws.close()
                        break
                    inbox = self.inboxes.get(channel)
                    if inbox is None:
                        continue  # a channel we did not ask for (or stdin/resize): nothing to do
                    if payload is channels.CLOSE:
                        inbox.end()
                    elif payload:
                        inbox.put(payload)
                        await inbox.wait_room()
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    self.lost = f"connection lost: {self.ws.exception()}"
                    break
            code = self.ws.close_code
            if not self.lost and code not in (None, 1000, 1005):
                self.lost = f"connection closed with WebSocket code {code}"
        except (aiohttp.ClientError, OSError) as e:
            self.lost = f"connection lost: {e}"
        finally:
            for inbox in self.inboxes.values():
                inbox.end()

    async def _send(self, channel: int, data: bytes) -> None:
        message = channels.encode(self.protocol, channel, data)
        async with self.send_lock:
            if self.ws.closed:
                raise ConnectionResetError("the WebSocket connection is closed")
            if isinstance(message, str):
                await self.ws.send_str(message)
            else:
                await self.ws.send_bytes(message)

    async def write_stdin(self, data: bytes) -> None:
        if not self.stdin:
            raise ValueError("stdin was not requested")
        if self.stdin_closed:
            raise ConnectionResetError("stdin already closed")
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            await self._send(channels.STDIN, bytes(view[i : i + CHUNK]))

    async def close_stdin(self) -> None:
        if not self.stdin or self.stdin_closed:
            return
        self.stdin_closed = True
        if self.framing.stream_close:
            with contextlib.suppress(ConnectionError, OSError):
                async with self.send_lock:
                    if not self.ws.closed:
                        await self.ws.send_bytes(channels.close_signal(channels.STDIN))

    async def resize(self, width: int, height: int) -> None:
        message = resize_message(width, height)
        if self.tty:
            await self._send(channels.RESIZE, message)

    async def _read(self, channel: int) -> bytes:
        inbox = self.inboxes.get(channel)
        return b"" if inbox is None else await inbox.read()

    async def read_stdout(self) -> bytes:
        return await self._read(channels.STDOUT)

    async def read_stderr(self) -> bytes:
        return await self._read(channels.STDERR)

    async def _wait(self) -> tuple[int, str]:
        message = bytearray()
        while chunk := await self._read(channels.ERROR):
            message += chunk
        if self.broken:
            raise RemoteError(self.broken)
        code, error = decode_status(self.protocol, bytes(message))
        if not message and self.lost:
            # a legacy protocol's "no news is good news" does not hold for a dropped line
            return NO_EXIT_CODE, (f"{error} ({self.lost})" if error else self.lost)
        return code, error

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.pump
        await self.http.close()


async def _refused(resp: aiohttp.ClientResponse) -> None:
    """aiohttp's response check: keep a refusal's status and body for the error."""
    if resp.status == 101:
        return
    body = ""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with asyncio.timeout(5):
            body = (await resp.content.read(MAX_BODY)).decode("utf-8", "replace")
    detail = f": {body.strip()}" if body.strip() else ""
    raise RemoteError(
        f"streaming server refused the WebSocket upgrade: {resp.status} {resp.reason}{detail}",
        resp.status,
        body,
    )


# -- run to completion -------------------------------------------------------------------------


@dataclass
class Result:
    stdout: bytes
    stderr: bytes
    exit_code: int  # NO_EXIT_CODE when ``error`` says why there is none
    error: str
    protocol: str


async def _collect(read: Callable[[], Awaitable[bytes]]) -> bytes:
    out = bytearray()
    while chunk := await read():
        out += chunk
    return bytes(out)


async def _feed(cmd: RemoteCommand, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        await cmd.write_stdin(data)
        await cmd.close_stdin()


async def run(
    url: str,
    *,
    stdin: bytes | None = None,
    tty: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    transport: str = "spdy",
    protocols: Sequence[str] | None = None,
    resize: tuple[int, int] | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> Result:
    """Run an exec/attach session to its end: all of ``stdin`` then EOF, all output collected.

    ``stdin`` None requests no stdin stream; stderr is never requested with ``tty``.
    ``resize`` (columns, rows) is sent first when there is a tty. Stdin is written while the
    output is read, so it may be larger than what the transport buffers. A command that ends
    before reading all of its stdin simply leaves the rest unsent. Over WebSocket v4 and older
    stdin EOF cannot be sent: a command that waits for it does not end.
    """
    cmd = await RemoteCommand.connect(
        url,
        stdin=stdin is not None,
        stdout=stdout,
        stderr=stderr and not tty,
        tty=tty,
        transport=transport,
        protocols=protocols,
        ssl=ssl,
    )
    async with cmd:
        if resize is not None and tty:
            await cmd.resize(*resize)
        feeder = asyncio.create_task(_feed(cmd, stdin)) if stdin is not None else None
        try:
            out, err = await asyncio.gather(_collect(cmd.read_stdout), _collect(cmd.read_stderr))
            code, error = await cmd.wait()
        finally:
            if feeder is not None and not feeder.done():
                feeder.cancel()  # the command ended without taking all of its stdin
            if feeder is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
    return Result(out, err, code, error, cmd.protocol)
