"""Codec tests for the WebSocket channel protocols and the status/resize channels."""

from __future__ import annotations

import json

import pytest

from crispy.streaming import channels as ch
from crispy.streaming import status as st

BINARY_PROTOCOLS = [
    ch.V5_CHANNEL,
    ch.V4_CHANNEL,
    ch.V3_CHANNEL,
    ch.V2_CHANNEL,
    ch.CHANNEL,
    ch.NO_PROTOCOL,
]
TEXT_PROTOCOLS = [ch.BASE64_CHANNEL, ch.V4_BASE64_CHANNEL, ch.V5_BASE64_CHANNEL]
PAYLOADS = [b"", b"hello", bytes(range(256)), b"\xff\x00\xfe" * 100]


# -- negotiation ------------------------------------------------------------------------------


def test_negotiate_prefers_client_order() -> None:
    supported = list(ch.EXEC_PROTOCOLS)
    assert ch.negotiate([ch.V4_CHANNEL, ch.V5_CHANNEL], supported) == ch.V4_CHANNEL
    assert ch.negotiate([ch.V5_CHANNEL, ch.V4_CHANNEL], supported) == ch.V5_CHANNEL
    assert ch.negotiate(["bogus", ch.BASE64_CHANNEL], supported) == ch.BASE64_CHANNEL
    # Server order is irrelevant.
    assert ch.negotiate([ch.V4_CHANNEL, ch.V5_CHANNEL], supported[::-1]) == ch.V4_CHANNEL


def test_negotiate_none_supported() -> None:
    assert ch.negotiate(["bogus", "v9.channel.k8s.io"], ch.EXEC_PROTOCOLS) is None
    assert ch.negotiate([ch.V5_CHANNEL], ch.PORTFORWARD_PROTOCOLS) is None
    assert ch.negotiate([ch.V5_CHANNEL], []) is None


def test_negotiate_empty_offer_is_empty_protocol() -> None:
    assert ch.negotiate([], ch.EXEC_PROTOCOLS) == ""
    assert ch.negotiate([], [ch.V4_CHANNEL]) is None


def test_protocol_properties() -> None:
    assert ch.protocol(ch.V5_CHANNEL).stream_close
    assert not ch.protocol(ch.V4_CHANNEL).stream_close
    assert not ch.protocol(ch.V5_BASE64_CHANNEL).binary
    assert ch.protocol(ch.V4_CHANNEL).status_errors
    assert not ch.protocol(ch.CHANNEL).status_errors
    assert ch.SPDY_TUNNEL_PORTFORWARD == "SPDY/3.1+portforward.k8s.io"
    assert (ch.STDIN, ch.STDOUT, ch.STDERR, ch.ERROR, ch.RESIZE) == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError):
        ch.protocol(ch.PORTFORWARD)  # SPDY protocol name, not a channel framing
    with pytest.raises(ValueError):
        ch.encode("nope", 0, b"x")


# -- framing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", BINARY_PROTOCOLS + TEXT_PROTOCOLS)
@pytest.mark.parametrize("channel", range(ch.EXEC_CHANNELS))
def test_round_trip(proto: str, channel: int) -> None:
    for payload in PAYLOADS:
        frame = ch.encode(proto, channel, payload)
        if proto in BINARY_PROTOCOLS:
            assert isinstance(frame, bytes)
            assert frame == bytes([channel]) + payload
        else:
            assert isinstance(frame, str)
            assert frame[0] == str(channel)
            assert frame.isascii()
        assert ch.decode(proto, frame) == (channel, payload)
    if proto in TEXT_PROTOCOLS:  # text frames may also arrive as bytes
        assert ch.decode(proto, str(channel).encode() + b"aGk=") == (channel, b"hi")


def test_base64_exact_framing() -> None:
    assert ch.encode(ch.BASE64_CHANNEL, 1, b"hello") == "1aGVsbG8="
    assert ch.encode(ch.V4_BASE64_CHANNEL, 0, b"") == "0"
    assert ch.decode(ch.BASE64_CHANNEL, "2aGVsbG8=") == (2, b"hello")
    assert ch.decode(ch.BASE64_CHANNEL, "0") == (0, b"")


def test_binary_exact_framing() -> None:
    assert ch.encode(ch.V4_CHANNEL, 2, b"err") == b"\x02err"
    assert ch.decode(ch.V4_CHANNEL, b"\x00") == (0, b"")


def test_v5_close_signal() -> None:
    sig = ch.close_signal(ch.STDIN)
    assert sig == b"\xff\x00"
    assert ch.decode(ch.V5_CHANNEL, sig) == (ch.STDIN, ch.CLOSE)
    assert ch.decode(ch.V5_CHANNEL, ch.close_signal(ch.RESIZE)) == (ch.RESIZE, ch.CLOSE)
    # Empty stdin data is data, not a close.
    assert ch.decode(ch.V5_CHANNEL, b"\x00") == (ch.STDIN, b"")


@pytest.mark.parametrize("proto", [ch.V4_CHANNEL, ch.CHANNEL, ch.V5_BASE64_CHANNEL])
def test_close_signal_rejected_without_v5(proto: str) -> None:
    with pytest.raises(ValueError):
        ch.decode(proto, ch.close_signal(ch.STDIN))


@pytest.mark.parametrize("frame", [b"\xff", b"\xff\x00\x01", b"\xff\x05", b"\xff\xff"])
def test_bad_close_signal(frame: bytes) -> None:
    with pytest.raises(ValueError):
        ch.decode(ch.V5_CHANNEL, frame)


@pytest.mark.parametrize(
    ("proto", "frame"),
    [
        (ch.V4_CHANNEL, b""),
        (ch.BASE64_CHANNEL, ""),
        (ch.V4_CHANNEL, b"\x05x"),  # channel out of range for exec
        (ch.V4_CHANNEL, b"\xffx"),
        (ch.BASE64_CHANNEL, "5aGk="),
        (ch.BASE64_CHANNEL, "xaGk="),
        (ch.BASE64_CHANNEL, "/aGk="),
        (ch.BASE64_CHANNEL, "1aGVsbG8"),  # missing padding
        (ch.BASE64_CHANNEL, "1a*b="),
        (ch.BASE64_CHANNEL, "1aGk=\n"),
        (ch.V4_BASE64_CHANNEL, "1é"),
    ],
)
def test_bad_frames(proto: str, frame: bytes | str) -> None:
    with pytest.raises(ValueError):
        ch.decode(proto, frame)


def test_encode_rejects_bad_channel() -> None:
    with pytest.raises(ValueError):
        ch.encode(ch.V4_CHANNEL, 5, b"x")
    with pytest.raises(ValueError):
        ch.encode(ch.V4_CHANNEL, -1, b"x")
    with pytest.raises(ValueError):
        ch.close_signal(5)


# -- port-forward -----------------------------------------------------------------------------


def test_portforward_channels() -> None:
    assert ch.portforward_channels([80, 8080, 443]) == [(80, 0, 1), (8080, 2, 3), (443, 4, 5)]
    assert ch.portforward_channels([]) == []
    for bad in ([0], [65536], [-1]):
        with pytest.raises(ValueError):
            ch.portforward_channels(bad)


def test_port_prefix() -> None:
    assert ch.port_prefix(8080) == b"\x90\x1f"
    assert ch.port_prefix(80) == b"\x50\x00"
    assert ch.port_prefix(65535) == b"\xff\xff"
    with pytest.raises(ValueError):
        ch.port_prefix(0)


def test_portforward_framing_many_ports() -> None:
    ports = list(range(9000, 9008))  # 16 channels: base64 channel chars go past '9'
    n = 2 * len(ports)
    for proto in (ch.V4_CHANNEL, ch.V4_BASE64_CHANNEL, ch.NO_PROTOCOL):
        for port, data_ch, err_ch in ch.portforward_channels(ports):
            for c in (data_ch, err_ch):
                frame = ch.encode(proto, c, ch.port_prefix(port), channels=n)
                assert ch.decode(proto, frame, channels=n) == (c, ch.port_prefix(port))
    assert ch.encode(ch.V4_BASE64_CHANNEL, 10, b"", channels=n) == ":"
    with pytest.raises(ValueError):
        ch.decode(ch.V4_CHANNEL, bytes([n]), channels=n)


# -- status -----------------------------------------------------------------------------------


def test_success_status() -> None:
    assert st.success() == b'{"metadata":{},"status":"Success"}'


def test_exit_code_status() -> None:
    raw = st.exit_code(3, ["sh", "-c", "exit 3"])
    obj = json.loads(raw)
    assert obj["metadata"] == {}
    assert obj["status"] == "Failure"
    assert obj["reason"] == "NonZeroExitCode"
    causes = obj["details"]["causes"]
    assert causes == [{"reason": "ExitCode", "message": "3"}]
    assert obj["message"] == (
        "command terminated with non-zero exit code: "
        "error executing command [sh -c exit 3], exit code 3"
    )
    assert raw.startswith(b'{"metadata":{},"status":"Failure","message":')
    assert b" " not in raw.split(b'"reason"', 1)[1]  # compact like Go
    assert json.loads(st.exit_code(255))["details"]["causes"][0]["message"] == "255"


@pytest.mark.parametrize("code", [0, -1, 256, True, 1.0])
def test_exit_code_rejects(code: object) -> None:
    with pytest.raises(ValueError):
        st.exit_code(code)  # type: ignore[arg-type]


def test_error_status() -> None:
    obj = json.loads(st.error("container not running"))
    assert obj == {"metadata": {}, "status": "Failure", "message": "container not running"}
    obj = json.loads(st.error("boom", reason="InternalError", code=500))
    assert (obj["reason"], obj["code"]) == ("InternalError", 500)
    assert b"\\u003c" in st.error("<x> & é")
    assert "é" in st.error("é").decode()
    with pytest.raises(ValueError):
        st.error("x", reason="NonZeroExitCode")


# -- resize -----------------------------------------------------------------------------------


def test_parse_resize() -> None:
    assert st.parse_resize(b'{"Width":80,"Height":24}') == (80, 24)
    assert st.parse_resize('{"height": 50, "width": 200}') == (200, 50)
    assert st.parse_resize('{"Width":65535,"Height":1}') == (65535, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[80,24]",
        b'{"Width":80}',
        b'{"Width":0,"Height":24}',
        b'{"Width":-1,"Height":24}',
        b'{"Width":65536,"Height":24}',
        b'{"Width":80.5,"Height":24}',
        b'{"Width":"80","Height":24}',
        b'{"Width":true,"Height":24}',
        b"\xff",
    ],
)
def test_parse_resize_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        st.parse_resize(data)


def test_resize_stream_decoder() -> None:
    dec = st.ResizeDecoder()
    assert dec.feed(b'{"Width":80,') == []
    assert dec.feed(b'"Height":24}\n{"Width":100,"Height":40}{"Wid') == [(80, 24), (100, 40)]
    assert dec.feed(b'th":1,"Height":2}') == [(1, 2)]
    assert dec.feed(b"  ") == []
    with pytest.raises(ValueError):
        st.ResizeDecoder().feed(b"[1]")
    with pytest.raises(ValueError):
        st.ResizeDecoder().feed(b'{"Width":0,"Height":1}')
