"""WebSocket channel codecs of the Kubernetes streaming protocols: framing only, no I/O.

These are the sub-protocols of ``k8s.io/apimachinery/pkg/util/httpstream/wsstream`` (the
multiplexed "channel" WebSocket) as used by ``remotecommand`` (exec/attach) and port-forward:

* binary protocols (``channel.k8s.io``, ``v4.channel.k8s.io``, ``v5.channel.k8s.io`` ...):
  every message is a binary frame whose first byte is the channel number, the rest payload;
* base64 protocols (``base64.channel.k8s.io``, ``v4.base64.channel.k8s.io`` ...): every message
  is a text frame whose first character is ``chr(ord("0") + channel)`` (an ASCII digit for
  channels 0-9) followed by the standard, padded base64 of the payload;
* ``v5.channel.k8s.io`` additionally lets the client half-close one channel (e.g. stdin EOF)
  with the two-byte frame ``[255, channel]`` (remotecommand ``StreamClose``).

Negotiation mirrors wsstream's handshake: the first protocol *the client offered* that the
server supports wins; a client that offers none is treated as offering ``""``.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Channel numbers of remotecommand (exec / attach).
STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
EXEC_CHANNELS = 5  # number of channels an exec/attach connection always has

# remotecommand.StreamClose: first byte of the v5 "close this channel" signal.
STREAM_CLOSE = 255

# remotecommand stream protocol names. These are also the SPDY X-Stream-Protocol-Version names.
V5_CHANNEL = "v5.channel.k8s.io"
V4_CHANNEL = "v4.channel.k8s.io"
V3_CHANNEL = "v3.channel.k8s.io"
V2_CHANNEL = "v2.channel.k8s.io"
CHANNEL = "channel.k8s.io"  # wsstream.ChannelWebSocketProtocol / StreamProtocolV1Name
BASE64_CHANNEL = "base64.channel.k8s.io"  # wsstream.Base64ChannelWebSocketProtocol
V4_BASE64_CHANNEL = "v4.base64.channel.k8s.io"
V5_BASE64_CHANNEL = "v5.base64.channel.k8s.io"
NO_PROTOCOL = ""  # what a client that sends no Sec-WebSocket-Protocol negotiates (binary)

# wsstream.Reader (single, unmultiplexed stream) protocols.
BINARY = "binary.k8s.io"
BASE64_BINARY = "base64.binary.k8s.io"

# Port-forward. ``portforward.k8s.io`` is PortForwardProtocolV1Name (SPDY); over WebSocket it
# is either the wsstream channel protocols below or SPDY tunnelled inside WebSocket messages.
PORTFORWARD = "portforward.k8s.io"
SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
SPDY_TUNNEL_PORTFORWARD = SPDY_TUNNEL_PREFIX + PORTFORWARD


@dataclass(frozen=True, slots=True)
class Protocol:
    """Properties of one channel sub-protocol."""

    name: str
    binary: bool  # False: text frames, digit channel + base64 payload
    stream_close: bool = False  # understands the [255, channel] close signal (v5)
    status_errors: bool = False  # error channel carries metav1.Status JSON (v4 and later)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(V5_CHANNEL, binary=True, stream_close=True, status_errors=True),
        Protocol(V5_BASE64_CHANNEL, binary=False, status_errors=True),
        Protocol(V4_CHANNEL, binary=True, status_errors=True),
        Protocol(V4_BASE64_CHANNEL, binary=False, status_errors=True),
        Protocol(V3_CHANNEL, binary=True),
        Protocol(V2_CHANNEL, binary=True),
        Protocol(CHANNEL, binary=True),
        Protocol(BASE64_CHANNEL, binary=False),
        Protocol(NO_PROTOCOL, binary=True),
    )
}

# What crispyd offers for exec/attach and port-forward WebSocket upgrades.
EXEC_PROTOCOLS: tuple[str, ...] = (
    V5_CHANNEL,
    V5_BASE64_CHANNEL,
    V4_CHANNEL,
    V4_BASE64_CHANNEL,
    V3_CHANNEL,
    V2_CHANNEL,
    CHANNEL,
    BASE64_CHANNEL,
    NO_PROTOCOL,
)
PORTFORWARD_PROTOCOLS: tuple[str, ...] = (V4_CHANNEL, V4_BASE64_CHANNEL, NO_PROTOCOL)


class Signal(enum.Enum):
    """Non-data results of :func:`decode`."""

    CLOSE = "close"


CLOSE = Signal.CLOSE


def protocol(name: str) -> Protocol:
    """The :class:`Protocol` called ``name``; ValueError if it is not a channel protocol."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown channel protocol {name!r}") from None


def negotiate(offered: Sequence[str], supported: Iterable[str]) -> str | None:
    """The first protocol in the client's ``offered`` list that is in ``supported``.

    An empty offer counts as ``[""]`` like wsstream's handshake. None if nothing matches.
    """
    allowed = set(supported)
    for name in offered or [NO_PROTOCOL]:
        if name in allowed:
            return name
    return None


def _check_channel(channel: int, channels: int) -> None:
    if not 0 <= channel < channels:
        raise ValueError(f"unknown channel {channel} (connection has {channels})")


def encode(proto: str, channel: int, data: bytes, *, channels: int = EXEC_CHANNELS) -> bytes | str:
    """One WebSocket message carrying ``data`` on ``channel``.

    Returns bytes (send as a binary frame) for binary protocols, str (send as a text frame) for
    base64 ones. ``channels`` bounds the channel number (5 for exec, 2 per port for port-forward).
    """
    p = protocol(proto)
    if channels > 255:
        raise ValueError("at most 255 channels")
    _check_channel(channel, channels)
    if p.binary:
        return bytes((channel,)) + bytes(data)
    if channel > 255 - ord("0"):
        raise ValueError(f"channel {channel} cannot be framed as base64 text")
    return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")


def close_signal(channel: int, *, channels: int = EXEC_CHANNELS) -> bytes:
    """The v5 binary message half-closing ``channel`` (e.g. the client's stdin EOF)."""
    _check_channel(channel, min(channels, 255))
    return bytes((STREAM_CLOSE, channel))


def decode(
    proto: str, frame: bytes | str, *, channels: int = EXEC_CHANNELS
) -> tuple[int, bytes | Signal]:
    """Split one received WebSocket message into ``(channel, payload)``.

    The payload is :data:`CLOSE` for a v5 close signal (the channel is the one being closed).
    Raises ValueError for an empty message, a channel outside ``range(channels)`` (including the
    close byte 255 under protocols without close signals), or invalid base64.
    """
    p = protocol(proto)
    raw = frame.encode("utf-8") if isinstance(frame, str) else bytes(frame)
    if not raw:
        raise ValueError("empty channel frame")
    if p.stream_close and raw[0] == STREAM_CLOSE:
        if len(raw) != 2:
            raise ValueError(f"close signal must name exactly one channel, got {len(raw) - 1}")
        _check_channel(raw[1], channels)
        return raw[1], CLOSE
    if p.binary:
        channel = raw[0]
        _check_channel(channel, channels)
        return channel, raw[1:]
    channel = raw[0] - ord("0")
    if not 0 <= channel < channels:
        raise ValueError(f"unknown channel digit {chr(raw[0])!r}")
    try:
        return channel, base64.b64decode(raw[1:], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 payload on channel {channel}: {exc}") from None


# Port-forward over wsstream: port i uses data channel 2*i and error channel 2*i+1.
PORTFORWARD_DATA = 0
PORTFORWARD_ERROR = 1


def portforward_channels(ports: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(port, data_channel, error_channel)`` for each requested port, in request order."""
    out = []
    for i, port in enumerate(ports):
        _check_port(port)
        out.append((port, 2 * i + PORTFORWARD_DATA, 2 * i + PORTFORWARD_ERROR))
    return out


def port_prefix(port: int) -> bytes:
    """The first payload the server writes on both channels of a port: uint16 little-endian."""
    _check_port(port)
    return port.to_bytes(2, "little")


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise ValueError(f"invalid port {port!r}")
