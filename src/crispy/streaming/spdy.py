"""SPDY/3.1 framing codec: frames, header-block compression, no I/O.

This is the wire format spoken by Go's ``github.com/moby/spdystream`` (the client in kubelet,
crictl and kubectl for exec/attach/port-forward). Section names refer to the SPDY Protocol
Draft 3 / 3.1 ("2.2 Framing", "2.6 Control frames", "2.6.10 Name/Value Header Block").

Header blocks are zlib streams with a preset dictionary (2.6.10.1). Each direction of a
connection has exactly one compression context that lives as long as the connection: every
block is SYNC_FLUSHed and the next block continues the same stream. A :class:`FrameWriter`
owns the outbound context and a :class:`FrameReader` the inbound one, so use exactly one of
each per connection.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

VERSION = 3

# 2.6 Control frame types. NOOP (5, SPDY/2) and CREDENTIAL (10) are ignored like unknowns.
TYPE_SYN_STREAM = 1
TYPE_SYN_REPLY = 2
TYPE_RST_STREAM = 3
TYPE_SETTINGS = 4
TYPE_PING = 6
TYPE_GOAWAY = 7
TYPE_HEADERS = 8
TYPE_WINDOW_UPDATE = 9

# 2.2.1 / 2.6.1 Flags.
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR_SETTINGS = 0x01  # SETTINGS frame flag
FLAG_SETTINGS_PERSIST_VALUE = 0x01  # per-entry flags
FLAG_SETTINGS_PERSISTED = 0x02

# 2.6.4 SETTINGS ids.
SETTINGS_UPLOAD_BANDWIDTH = 1
SETTINGS_DOWNLOAD_BANDWIDTH = 2
SETTINGS_ROUND_TRIP_TIME = 3
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_CURRENT_CWND = 5
SETTINGS_DOWNLOAD_RETRANS_RATE = 6
SETTINGS_INITIAL_WINDOW_SIZE = 7
SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE = 8

# 2.6.3 RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
INVALID_CREDENTIALS = 10
FRAME_TOO_LARGE = 11

# 2.6.6 GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

MAX_STREAM_ID = 0x7FFFFFFF
MAX_LENGTH = 0xFFFFFF  # 24-bit length field (2.2)
DEFAULT_MAX_FRAME_SIZE = MAX_LENGTH
DEFAULT_MAX_HEADER_SIZE = 1 << 20  # decompressed header block limit (zlib-bomb guard)
HEADER_VALUE_SEPARATOR = "\x00"

_HEADER_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_HEADER_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _build_dictionary() -> bytes:
    # 2.6.10.1 Compression: length-prefixed words, then a raw string; 1423 bytes, no NUL.
    prefixed = b"".join(struct.pack("!I", len(w)) + w.encode("ascii") for w in _HEADER_WORDS)
    return prefixed + _HEADER_TAIL.encode("ascii")


#: The SPDY/3 zlib dictionary (``headerDictionary`` in spdystream), byte for byte.
HEADER_DICTIONARY = _build_dictionary()

HeaderMap = dict[str, list[str]]
"""Decoded headers: lower-case name -> values (multi-values were joined with NUL)."""
HeaderInput = Mapping[str, str | Sequence[str]]
"""Headers to encode: a value is one string or a sequence of strings."""


class ProtocolError(Exception):
    """Malformed input. ``status`` is the RST_STREAM/GOAWAY code to answer with.

    Any error from :class:`FrameReader` is fatal to the session (the zlib context or the
    frame boundaries can no longer be trusted): send GOAWAY and close.
    """

    def __init__(self, message: str, status: int = PROTOCOL_ERROR, stream_id: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.stream_id = stream_id


# --- Frames (2.2 Framing, 2.6 Control frames) ---------------------------------------------


@dataclass
class DataFrame:
    stream_id: int
    data: bytes = b""
    fin: bool = False


@dataclass
class SynStream:
    stream_id: int
    headers: HeaderInput = field(default_factory=dict)
    associated_id: int = 0
    priority: int = 0  # 0 (highest) .. 7
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass
class SynReply:
    stream_id: int
    headers: HeaderInput = field(default_factory=dict)
    fin: bool = False


@dataclass
class RstStream:
    stream_id: int
    status: int


class Setting(NamedTuple):
    flags: int
    id: int
    value: int


@dataclass
class Settings:
    entries: list[Setting] = field(default_factory=list)
    clear: bool = False


@dataclass
class Ping:
    id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass
class Headers:
    stream_id: int
    headers: HeaderInput = field(default_factory=dict)
    fin: bool = False


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


Frame = (
    DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | Headers | WindowUpdate
)


# --- 2.6.10 Name/Value Header Block ------------------------------------------------------


def encode_header_block(headers: HeaderInput) -> bytes:
    """Serialize headers (uncompressed): 32-bit count, then 32-bit-length names and values.

    Names are lower-cased; names equal after lower-casing are merged. Several values for one
    name are joined with NUL.
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        if not name:
            raise ValueError("empty header name")
        values = [value] if isinstance(value, str) else list(value)
        if any(HEADER_VALUE_SEPARATOR in v for v in values):
            raise ValueError(f"NUL in value of header {name!r}")
        merged.setdefault(name.lower(), []).extend(values)
    out = [struct.pack("!I", len(merged))]
    for name, values in merged.items():
        for part in (name, HEADER_VALUE_SEPARATOR.join(values)):
            raw = part.encode("utf-8", "surrogateescape")
            out.append(struct.pack("!I", len(raw)))
            out.append(raw)
    return b"".join(out)


def decode_header_block(block: bytes) -> HeaderMap:
    """Parse an uncompressed name/value block; it must be consumed exactly."""
    view = memoryview(block)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise ProtocolError("truncated header block")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    def take_u32() -> int:
        (n,) = struct.unpack("!I", take(4))
        return int(n)

    count = take_u32()
    if count > len(block) // 8:  # every pair needs at least two length fields
        raise ProtocolError("header count exceeds block size")
    headers: HeaderMap = {}
    for _ in range(count):
        name = take(take_u32()).decode("utf-8", "surrogateescape")
        value = take(take_u32()).decode("utf-8", "surrogateescape")
        if not name:
            raise ProtocolError("empty header name")
        if name != name.lower():
            raise ProtocolError(f"header name not lower-case: {name!r}")
        if name in headers:
            raise ProtocolError(f"duplicate header name: {name!r}")
        headers[name] = value.split(HEADER_VALUE_SEPARATOR)
    if pos != len(block):
        raise ProtocolError("trailing bytes after header block")
    return headers


class HeaderCodec:
    """The two zlib contexts of one connection: ``compress`` for outbound blocks and
    ``decompress`` for inbound ones. Both keep state across calls (2.6.10.1)."""

    def __init__(self, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self.max_header_size = max_header_size
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def compress(self, headers: HeaderInput) -> bytes:
        if self._compressor is None:  # spdystream uses BestCompression
            self._compressor = zlib.compressobj(9, zdict=HEADER_DICTIONARY)
        c = self._compressor
        return c.compress(encode_header_block(headers)) + c.flush(zlib.Z_SYNC_FLUSH)

    def decompress(self, block: bytes) -> HeaderMap:
        if not block:
            raise ProtocolError("empty compressed header block")
        if self._decompressor is None:
            self._decompressor = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        d = self._decompressor
        try:
            raw = d.decompress(block, self.max_header_size + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header decompression failed: {exc}") from exc
        if len(raw) > self.max_header_size or d.unconsumed_tail:
            raise ProtocolError("header block too large", FRAME_TOO_LARGE)
        if d.eof or d.unused_data:
            raise ProtocolError("peer ended the header compression stream")
        return decode_header_block(raw)


# --- Writer --------------------------------------------------------------------------------


def _stream_id(value: int, *, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= value <= MAX_STREAM_ID:
        raise ValueError(f"stream id out of range: {value}")
    return value


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    # 2.2.1 Control frames: C=1 | version(15) | type(16) | flags(8) | length(24) | data
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame payload too large")
    return struct.pack("!HHI", 0x8000 | VERSION, frame_type, flags << 24 | len(payload)) + payload


class FrameWriter:
    """Serializes frames; owns the outbound header compression context."""

    def __init__(self) -> None:
        self.headers = HeaderCodec()

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            # 2.2.2 Data frames: C=0 | stream id(31) | flags(8) | length(24) | data
            if len(frame.data) > MAX_LENGTH:
                raise ValueError("data frame payload too large")
            flags = FLAG_FIN if frame.fin else 0
            head = struct.pack("!II", _stream_id(frame.stream_id), flags << 24 | len(frame.data))
            return head + bytes(frame.data)
        if isinstance(frame, SynStream):  # 2.6.1 SYN_STREAM
            if not 0 <= frame.priority <= 7 or not 0 <= frame.slot <= 0xFF:
                raise ValueError("priority must be 0..7 and slot 0..255")
            flags = (FLAG_FIN if frame.fin else 0) | (
                FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
            )
            fixed = struct.pack(
                "!IIBB",
                _stream_id(frame.stream_id),
                _stream_id(frame.associated_id, allow_zero=True),
                frame.priority << 5,
                frame.slot,
            )
            block = self.headers.compress(frame.headers)
            return _control(TYPE_SYN_STREAM, flags, fixed + block)
        if isinstance(frame, SynReply | Headers):  # 2.6.2 SYN_REPLY, 2.6.7 HEADERS
            kind = TYPE_SYN_REPLY if isinstance(frame, SynReply) else TYPE_HEADERS
            fixed = struct.pack("!I", _stream_id(frame.stream_id))
            block = self.headers.compress(frame.headers)
            return _control(kind, FLAG_FIN if frame.fin else 0, fixed + block)
        if isinstance(frame, RstStream):  # 2.6.3 RST_STREAM
            if frame.status <= 0:
                raise ValueError("RST_STREAM status must be non-zero")
            payload = struct.pack("!II", _stream_id(frame.stream_id), frame.status)
            return _control(TYPE_RST_STREAM, 0, payload)
        if isinstance(frame, Settings):  # 2.6.4 SETTINGS
            parts = [struct.pack("!I", len(frame.entries))]
            for flags, ident, value in frame.entries:
                if not 0 <= ident <= MAX_LENGTH:
                    raise ValueError(f"settings id out of range: {ident}")
                parts.append(struct.pack("!II", flags << 24 | ident, value))
            flags = FLAG_SETTINGS_CLEAR_SETTINGS if frame.clear else 0
            return _control(TYPE_SETTINGS, flags, b"".join(parts))
        if isinstance(frame, Ping):  # 2.6.5 PING
            return _control(TYPE_PING, 0, struct.pack("!I", frame.id))
        if isinstance(frame, GoAway):  # 2.6.6 GOAWAY
            last = _stream_id(frame.last_good_stream_id, allow_zero=True)
            return _control(TYPE_GOAWAY, 0, struct.pack("!II", last, frame.status))
        if isinstance(frame, WindowUpdate):  # 2.6.8 WINDOW_UPDATE
            if not 1 <= frame.delta <= MAX_STREAM_ID:
                raise ValueError(f"window delta out of range: {frame.delta}")
            payload = struct.pack("!II", _stream_id(frame.stream_id, allow_zero=True), frame.delta)
            return _control(TYPE_WINDOW_UPDATE, 0, payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")


# --- Reader --------------------------------------------------------------------------------


class FrameReader:
    """Incremental parser; owns the inbound header decompression context.

    ``feed(data)`` buffers bytes and returns every complete frame. Unknown control frame
    types are skipped (2.2.1). Errors raise :class:`ProtocolError` and are sticky: the
    reader raises the same error on every later call.
    """

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.headers = HeaderCodec(max_header_size)
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self.receive(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def receive(self, data: bytes) -> None:
        """Buffer bytes without parsing (see :meth:`next_frame`)."""
        self._buf += data

    def next_frame(self) -> Frame | None:
        """Parse one frame from the buffer, or return None if none is complete yet."""
        if self._error is not None:
            raise self._error
        try:
            while len(self._buf) >= 8:
                word, flags_len = struct.unpack_from("!II", self._buf)
                length = flags_len & MAX_LENGTH
                if length > self.max_frame_size:
                    raise ProtocolError(f"frame of {length} bytes too large", FRAME_TOO_LARGE)
                if len(self._buf) < 8 + length:
                    return None
                payload = bytes(self._buf[8 : 8 + length])
                del self._buf[: 8 + length]
                frame = self._parse(word, flags_len >> 24, payload)
                if frame is not None:
                    return frame
            return None
        except ProtocolError as exc:
            self._error = exc
            raise

    def _parse(self, word: int, flags: int, payload: bytes) -> Frame | None:
        if not word & 0x80000000:  # 2.2.2 Data frames
            if word == 0:
                raise ProtocolError("data frame on stream 0")
            return DataFrame(word & MAX_STREAM_ID, payload, bool(flags & FLAG_FIN))
        version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}", UNSUPPORTED_VERSION)
        fin = bool(flags & FLAG_FIN)
        if kind == TYPE_SYN_STREAM:
            if len(payload) < 10:
                raise ProtocolError("SYN_STREAM too short")
            sid, assoc, prio, slot = struct.unpack_from("!IIBB", payload)
            sid, assoc = _check_stream(sid), assoc & MAX_STREAM_ID
            return SynStream(
                sid,
                self.headers.decompress(payload[10:]),
                associated_id=assoc,
                priority=prio >> 5,
                slot=slot,
                fin=fin,
                unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if kind in (TYPE_SYN_REPLY, TYPE_HEADERS):
            if len(payload) < 4:
                raise ProtocolError("SYN_REPLY/HEADERS too short")
            sid = _check_stream(struct.unpack_from("!I", payload)[0])
            block = self.headers.decompress(payload[4:])
            return SynReply(sid, block, fin) if kind == TYPE_SYN_REPLY else Headers(sid, block, fin)
        if kind == TYPE_RST_STREAM:
            sid, status = _fixed(payload, "RST_STREAM")
            if status == 0:
                raise ProtocolError("RST_STREAM with status 0")
            return RstStream(_check_stream(sid), status)
        if kind == TYPE_SETTINGS:
            if len(payload) < 4:
                raise ProtocolError("SETTINGS too short")
            (count,) = struct.unpack_from("!I", payload)
            if len(payload) != 4 + 8 * count:
                raise ProtocolError("SETTINGS length does not match entry count")
            entries = []
            for off in range(4, len(payload), 8):
                flag_id, value = struct.unpack_from("!II", payload, off)
                entries.append(Setting(flag_id >> 24, flag_id & MAX_LENGTH, value))
            return Settings(entries, bool(flags & FLAG_SETTINGS_CLEAR_SETTINGS))
        if kind == TYPE_PING:
            if len(payload) != 4:
                raise ProtocolError("PING length must be 4")
            return Ping(struct.unpack("!I", payload)[0])
        if kind == TYPE_GOAWAY:
            last, status = _fixed(payload, "GOAWAY")
            return GoAway(last & MAX_STREAM_ID, status)
        if kind == TYPE_WINDOW_UPDATE:
            sid, delta = _fixed(payload, "WINDOW_UPDATE")
            return WindowUpdate(sid & MAX_STREAM_ID, delta & MAX_STREAM_ID)
        return None  # 2.2.1: unknown control frames are ignored


def _check_stream(raw: int) -> int:
    sid = raw & MAX_STREAM_ID
    if sid == 0:
        raise ProtocolError("stream id 0 is not allowed")
    return sid


def _fixed(payload: bytes, name: str) -> tuple[int, int]:
    if len(payload) != 8:
        raise ProtocolError(f"{name} length must be 8")
    a, b = struct.unpack("!II", payload)
    return int(a), int(b)
