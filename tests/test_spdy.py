"""SPDY/3.1 framing codec (crispy.streaming.spdy): frames, header compression, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

import pytest

from crispy.streaming import spdy
from crispy.streaming.spdy import (
    HEADER_DICTIONARY,
    DataFrame,
    Frame,
    FrameReader,
    FrameWriter,
    GoAway,
    HeaderCodec,
    Headers,
    Ping,
    ProtocolError,
    RstStream,
    Setting,
    Settings,
    SynReply,
    SynStream,
    WindowUpdate,
    decode_header_block,
    encode_header_block,
)

# sha256 of the 1423-byte dictionary of SPDY/3 section 2.6.10.1. Its Adler-32, 0xe3c6a7c2, is
# the DICTID real SPDY/3 peers put in every header stream (bytes 38 ea e3 c6 a7 c2).
DICTIONARY_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"

EXEC_HEADERS = {"streamtype": "stdout", "requestid": "0", "x-multi": ["a", "b"]}


def nv_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """An uncompressed name/value block built by hand from the 2.6.10 layout."""
    out = struct.pack("!I", len(pairs))
    for name, value in pairs:
        out += struct.pack("!I", len(name)) + name + struct.pack("!I", len(value)) + value
    return out


def fresh_compress(raw: bytes) -> bytes:
    c = zlib.compressobj(zdict=HEADER_DICTIONARY)
    return c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)


def control(kind: int, flags: int, payload: bytes, version: int = 3) -> bytes:
    return struct.pack("!HHI", 0x8000 | version, kind, flags << 24 | len(payload)) + payload


def normalized(frame: Frame) -> Frame:
    """Frame with headers as the reader returns them (dict[str, list[str]])."""
    if not isinstance(frame, SynStream | SynReply | Headers):
        return frame
    fixed = {k: [v] if isinstance(v, str) else list(v) for k, v in frame.headers.items()}
    return dataclasses.replace(frame, headers=fixed)


ALL_FRAMES: list[Frame] = [
    SynStream(1, EXEC_HEADERS, associated_id=0, priority=3, slot=0, fin=False),
    SynStream(3, {"streamtype": "error"}, priority=7, fin=True, unidirectional=True),
    SynReply(1, {"status": "200"}, fin=False),
    DataFrame(1, b"hello\x00world", fin=False),
    DataFrame(1, b"", fin=True),
    Headers(1, {"x-exit": "0"}, fin=True),
    RstStream(3, spdy.CANCEL),
    Settings(
        [
            Setting(spdy.FLAG_SETTINGS_PERSIST_VALUE, spdy.SETTINGS_INITIAL_WINDOW_SIZE, 65536),
            Setting(0, spdy.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
        ],
        clear=True,
    ),
    Settings([]),
    Ping(7),
    GoAway(3, spdy.GOAWAY_PROTOCOL_ERROR),
    WindowUpdate(1, 0x7FFFFFFF),
    WindowUpdate(0, 1),
]


# --- dictionary -------------------------------------------------------------------------


def test_dictionary_matches_spec() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() == DICTIONARY_SHA256
    assert zlib.adler32(HEADER_DICTIONARY) == 0xE3C6A7C2


# --- round trips ------------------------------------------------------------------------


def test_round_trip_every_frame_type() -> None:
    writer, reader = FrameWriter(), FrameReader()
    wire = b"".join(writer.encode(f) for f in ALL_FRAMES)
    assert reader.feed(wire) == [normalized(f) for f in ALL_FRAMES]
    assert reader.feed(b"") == []


def test_incremental_parsing_at_every_split_offset() -> None:
    writer = FrameWriter()
    frames = [ALL_FRAMES[0], ALL_FRAMES[3], ALL_FRAMES[2], ALL_FRAMES[7]]
    wire = b"".join(writer.encode(f) for f in frames)
    expected = [normalized(f) for f in frames]
    for cut in range(len(wire) + 1):
        reader = FrameReader()
        assert reader.feed(wire[:cut]) + reader.feed(wire[cut:]) == expected, cut
    reader = FrameReader()
    got = [f for i in range(len(wire)) for f in reader.feed(wire[i : i + 1])]
    assert got == expected


def test_next_frame_api() -> None:
    wire = FrameWriter().encode(Ping(1)) + FrameWriter().encode(Ping(2))
    reader = FrameReader()
    reader.receive(wire[:-1])
    assert reader.next_frame() == Ping(1)
    assert reader.next_frame() is None
    reader.receive(wire[-1:])
    assert reader.next_frame() == Ping(2)


def test_wire_layout_of_written_syn_stream() -> None:
    """Check the writer's bytes field by field against 2.6.1, decoding with plain zlib."""
    wire = FrameWriter().encode(
        SynStream(5, {"Port": "8080"}, associated_id=1, priority=2, slot=9, fin=True)
    )
    c_ver, kind, flags_len = struct.unpack_from("!HHI", wire)
    assert c_ver == 0x8003 and kind == 1
    assert flags_len >> 24 == spdy.FLAG_FIN and flags_len & 0xFFFFFF == len(wire) - 8
    assert struct.unpack_from("!IIBB", wire, 8) == (5, 1, 2 << 5, 9)
    block = wire[18:]
    assert block[:2] == b"\x78\xf9"  # zlib header: FDICT set, best compression
    assert block[2:6] == struct.pack("!I", zlib.adler32(HEADER_DICTIONARY))
    raw = zlib.decompressobj(zdict=HEADER_DICTIONARY).decompress(block)
    assert raw == nv_block([(b"port", b"8080")])  # name lower-cased


def test_decode_hand_built_syn_stream() -> None:
    block = fresh_compress(
        nv_block([(b"streamtype", b"data"), (b"port", b"80"), (b"x-dup", b"1\x002")])
    )
    payload = struct.pack("!IIBB", 0x80000007, 0x80000005, 5 << 5, 0) + block  # reserved bits
    wire = control(1, spdy.FLAG_FIN | spdy.FLAG_UNIDIRECTIONAL, payload)
    assert wire[:4] == b"\x80\x03\x00\x01"
    [frame] = FrameReader().feed(wire)
    assert frame == SynStream(
        7,
        {"streamtype": ["data"], "port": ["80"], "x-dup": ["1", "2"]},
        associated_id=5,
        priority=5,
        slot=0,
        fin=True,
        unidirectional=True,
    )


# --- header compression -----------------------------------------------------------------


def test_header_compression_keeps_state_across_frames() -> None:
    writer, reader = FrameWriter(), FrameReader()
    headers = {"streamtype": "stdout", "requestid": "12345", "x-kubernetes-long": "v" * 200}
    wires = [writer.encode(SynStream(2 * i + 1, headers)) for i in range(3)]
    assert len(wires[1]) < len(wires[0]) // 3
    assert len(wires[2]) <= len(wires[1])
    frames = reader.feed(b"".join(wires))
    assert frames == [SynStream(i, {k: [v] for k, v in headers.items()}) for i in (1, 3, 5)]
    # The second block only makes sense to the decompressor that saw the first one.
    with pytest.raises(ProtocolError):
        FrameReader().feed(wires[1])


def test_header_codec_directions_are_independent() -> None:
    ours, theirs = HeaderCodec(), HeaderCodec()
    for i in range(3):
        assert theirs.decompress(ours.compress({"n": str(i)})) == {"n": [str(i)]}
        assert ours.decompress(theirs.compress({"m": str(i)})) == {"m": [str(i)]}


def test_header_block_codec() -> None:
    raw = encode_header_block({"Content-Type": "a", "content-type": ["b"], "e": ""})
    assert raw == nv_block([(b"content-type", b"a\x00b"), (b"e", b"")])
    assert decode_header_block(raw) == {"content-type": ["a", "b"], "e": [""]}
    with pytest.raises(ValueError):
        encode_header_block({"x": "a\x00b"})
    with pytest.raises(ValueError):
        encode_header_block({"": "x"})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (nv_block([(b"a", b"1")])[:-1], "truncated"),
        (struct.pack("!I", 2) + nv_block([(b"a", b"1")])[4:], "truncated|count"),
        (nv_block([(b"A", b"1")]), "lower-case"),
        (nv_block([(b"a", b"1"), (b"a", b"2")]), "duplicate"),
        (nv_block([(b"", b"1")]), "empty"),
        (nv_block([(b"a", b"1")]) + b"\x00", "trailing"),
    ],
)
def test_malformed_header_block(raw: bytes, match: str) -> None:
    wire = control(2, 0, struct.pack("!I", 1) + fresh_compress(raw))
    with pytest.raises(ProtocolError, match=match):
        FrameReader().feed(wire)


def test_header_size_limit() -> None:
    wire = FrameWriter().encode(SynReply(1, {"x": "y" * 5000}))
    with pytest.raises(ProtocolError) as info:
        FrameReader(max_header_size=1000).feed(wire)
    assert info.value.status == spdy.FRAME_TOO_LARGE


# --- malformed frames -------------------------------------------------------------------


def test_zlib_garbage() -> None:
    wire = control(1, 0, struct.pack("!IIBB", 1, 0, 0, 0) + b"\xde\xad\xbe\xef" * 4)
    with pytest.raises(ProtocolError, match="decompression"):
        FrameReader().feed(wire)


def test_wrong_version() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameReader().feed(control(6, 0, struct.pack("!I", 1), version=2))
    assert info.value.status == spdy.UNSUPPORTED_VERSION


def test_frame_too_large_is_rejected_from_its_header() -> None:
    reader = FrameReader(max_frame_size=1024)
    with pytest.raises(ProtocolError) as info:
        reader.feed(struct.pack("!II", 1, 4096))  # payload not even sent yet
    assert info.value.status == spdy.FRAME_TOO_LARGE


def test_errors_are_sticky() -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        reader.feed(control(6, 0, b"\x00\x00\x00\x01", version=4))
    with pytest.raises(ProtocolError):
        reader.feed(FrameWriter().encode(Ping(1)))


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack("!II", 0, 1) + b"x",  # data on stream 0
        control(1, 0, b"\x00" * 9),  # SYN_STREAM shorter than its fixed part
        control(1, 0, struct.pack("!IIBB", 1, 0, 0, 0)),  # SYN_STREAM without header block
        control(2, 0, b"\x00\x00"),  # SYN_REPLY too short
        control(3, 0, struct.pack("!II", 1, 0)),  # RST_STREAM status 0
        control(3, 0, struct.pack("!II", 0, 1)),  # RST_STREAM on stream 0
        control(3, 0, struct.pack("!III", 1, 1, 0)),  # RST_STREAM length 12
        control(4, 0, struct.pack("!I", 2) + b"\x00" * 8),  # SETTINGS count mismatch
        control(4, 0, b"\x00"),  # SETTINGS too short
        control(6, 0, b"\x00" * 8),  # PING length 8
        control(7, 0, b"\x00" * 4),  # GOAWAY length 4 (SPDY/2 layout)
        control(9, 0, b"\x00" * 4),  # WINDOW_UPDATE too short
    ],
)
def test_malformed_frames(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(wire)


def test_unknown_control_frames_are_skipped() -> None:
    writer = FrameWriter()
    wire = (
        writer.encode(Ping(1))
        + control(0x0B, 0, b"\xd4\x74")  # undefined type 11
        + control(5, 0, b"")  # NOOP (SPDY/2)
        + control(10, 0, b"\x00" * 12)  # CREDENTIAL
        + writer.encode(DataFrame(1, b"x"))
    )
    for cut in range(len(wire) + 1):
        reader = FrameReader()
        assert reader.feed(wire[:cut]) + reader.feed(wire[cut:]) == [
            Ping(1),
            DataFrame(1, b"x"),
        ]


def test_writer_validation() -> None:
    writer = FrameWriter()
    with pytest.raises(ValueError):
        writer.encode(DataFrame(0, b"x"))
    with pytest.raises(ValueError):
        writer.encode(SynStream(1, {}, priority=8))
    with pytest.raises(ValueError):
        writer.encode(RstStream(1, 0))
    with pytest.raises(ValueError):
        writer.encode(WindowUpdate(1, 0))
    with pytest.raises(TypeError):
        writer.encode("ping")  # type: ignore[arg-type]
