"""The error/status channel of remotecommand v4+ and the resize channel: JSON codecs, no I/O.

At the end of an exec/attach the server writes one ``metav1.Status`` (encoded like Go's
``json.Marshal``: compact, fields in struct order, empty ``metadata`` kept, empty fields
dropped) on the error stream. client-go's ``errorDecoderV4`` turns ``Success`` into no error,
``Failure`` with reason ``NonZeroExitCode`` into an ``ExitError`` whose code it reads from the
``details.causes`` entry of reason (``StatusCause.Type``) ``ExitCode`` (parsed as a uint8), and
any other ``Failure`` into an error carrying ``message``.

The resize stream carries ``remotecommand.TerminalSize`` objects, ``{"Width":80,"Height":24}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

STATUS_SUCCESS = "Success"
STATUS_FAILURE = "Failure"
REASON_NON_ZERO_EXIT_CODE = "NonZeroExitCode"  # remotecommand.NonZeroExitCodeReason
CAUSE_EXIT_CODE = "ExitCode"  # remotecommand.ExitCodeCauseType

MAX_TERMINAL_DIMENSION = 65535  # TerminalSize fields are uint16


def _marshal(obj: dict[str, Any]) -> bytes:
    # Go's encoding/json escapes <, >, & and U+2028/U+2029 but leaves other UTF-8 alone.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text.encode("utf-8")


def success() -> bytes:
    """The Status written when the command exited 0 (or the attach ended cleanly)."""
    return _marshal({"metadata": {}, "status": STATUS_SUCCESS})


def _go_list(args: Sequence[str]) -> str:
    return "[" + " ".join(args) + "]"  # fmt's %v of a []string


def exit_message(code: int, command: Sequence[str] | None = None) -> str:
    """kubelet's text for a non-zero exit: the Status message, and all that the protocols
    before v4 write on the error stream."""
    cmd = _go_list(command) if command is not None else "[]"
    return (
        "command terminated with non-zero exit code: "
        f"error executing command {cmd}, exit code {code}"
    )


def exit_code(code: int, command: Sequence[str] | None = None) -> bytes:
    """The Status for a command that exited with non-zero ``code`` (1-255).

    client-go parses the cause message with ``strconv.ParseUint(msg, 10, 8)``, so codes outside
    1..255 cannot be represented; report those with :func:`error` instead.
    """
    if isinstance(code, bool) or not isinstance(code, int) or not 0 < code <= 255:
        raise ValueError(f"exit code must be an int in 1..255, got {code!r}")
    return _marshal(
        {
            "metadata": {},
            "status": STATUS_FAILURE,
            "message": exit_message(code, command),
            "reason": REASON_NON_ZERO_EXIT_CODE,
            "details": {"causes": [{"reason": CAUSE_EXIT_CODE, "message": str(code)}]},
        }
    )


def error(message: str, *, reason: str | None = None, code: int | None = None) -> bytes:
    """A Failure Status; clients surface ``message`` as the error text.

    ``reason``/``code`` are the optional ``metav1.StatusReason`` and HTTP code (e.g.
    "InternalError", 500 as kubelet's ``NewInternalError`` sets them).
    """
    if reason == REASON_NON_ZERO_EXIT_CODE:
        raise ValueError("use exit_code() for NonZeroExitCode statuses")
    obj: dict[str, Any] = {"metadata": {}, "status": STATUS_FAILURE}
    if message:
        obj["message"] = message
    if reason:
        obj["reason"] = reason
    if code:
        obj["code"] = code
    return _marshal(obj)


def _dimension(obj: dict[str, Any], name: str) -> int:
    # Go's decoder matches field names case-insensitively; the exact name wins.
    if name in obj:
        value = obj[name]
    else:
        matches = [v for k, v in obj.items() if k.lower() == name.lower()]
        if not matches:
            raise ValueError(f"terminal size has no {name}")
        value = matches[-1]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"terminal {name} must be an integer, got {value!r}")
    if not 0 < value <= MAX_TERMINAL_DIMENSION:
        raise ValueError(f"terminal {name} {value} out of range 1..{MAX_TERMINAL_DIMENSION}")
    return value


def _size(obj: object) -> tuple[int, int]:
    if not isinstance(obj, dict):
        raise ValueError("terminal size must be a JSON object")
    return _dimension(obj, "Width"), _dimension(obj, "Height")


def parse_resize(data: bytes | str) -> tuple[int, int]:
    """``(width, height)`` from one resize message ``{"Width":80,"Height":24}``."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"bad terminal size JSON: {exc}") from None
    return _size(obj)


class ResizeDecoder:
    """Incremental decoder for a resize *stream* (SPDY): concatenated TerminalSize objects.

    Feed raw bytes as they arrive; complete objects come out, partial ones are buffered.
    """

    MAX_BUFFER = 4096

    def __init__(self) -> None:
        self._buf = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The sizes completed by ``data``; ValueError on malformed input."""
        out: list[tuple[int, int]] = []
        raw = self._pending + data
        # Keep an incomplete trailing UTF-8 sequence for the next chunk.
        try:
            text = raw.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":
                raise ValueError("terminal size stream is not UTF-8") from None
            text, self._pending = raw[: exc.start].decode("utf-8"), raw[exc.start :]
        self._buf += text
        while True:
            buf = self._buf.lstrip()
            if not buf:
                self._buf = ""
                return out
            if buf[0] != "{":
                raise ValueError("terminal size must be a JSON object")
            try:
                obj, end = self._decoder.raw_decode(buf)
            except json.JSONDecodeError:
                if len(buf) > self.MAX_BUFFER:
                    raise ValueError("terminal size message too long") from None
                self._buf = buf
                return out
            self._buf = buf[end:]
            out.append(_size(obj))
