"""A container's stop signal: what StopContainer sends first, fixed at CreateContainer."""

from __future__ import annotations

import logging
import signal
from typing import Any

from crispy import errors
from crispy.api import pb

log = logging.getLogger(__name__)


def parse_signal(name: str) -> int:
    """'SIGTERM', 'TERM', '15', 'SIGRTMIN+3', 'RTMAX-1', the CRI's 'SIGRTMINPLUS3' -> the
    number (1 to SIGRTMAX); InvalidArgument for anything else."""
    s = name.strip().upper()
    if s.isdigit():
        n = int(s)
        if 0 < n <= signal.SIGRTMAX:
            return n
    else:
        s = s if s.startswith("SIG") else "SIG" + s
        try:
            return int(signal.Signals[s])
        except KeyError:
            pass
        if s.startswith(("SIGRTMIN", "SIGRTMAX")):
            base = signal.SIGRTMIN if s.startswith("SIGRTMIN") else signal.SIGRTMAX
            rest = s[8:].replace("PLUS", "+").replace("MINUS", "-")
            if rest[:1] in ("+", "-") and rest[1:].isdigit():
                n = int(base) + int(rest)
                if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                    return n
    raise errors.InvalidArgument(f"unknown signal {name!r}")


def resolve_stop_signal(
    cid: str, config: pb.ContainerConfig, image_config: dict[str, Any], warn: bool = False
) -> int:
    """The container config's stop_signal, else the image's StopSignal, else SIGTERM. One
    that names no signal (an image may say anything) is SIGTERM, with a warning: kubelet
    must always be able to stop a container."""
    if config.stop_signal:
        name, what = pb.Signal.Name(config.stop_signal), "stop_signal"
    else:
        name, what = image_stop_signal(image_config), "the image's StopSignal"
    if not name:
        return int(signal.SIGTERM)
    try:
        return parse_signal(name)
    except errors.InvalidArgument:
        if warn:
            log.warning(
                "container %s: %s %r is not a signal; StopContainer will send SIGTERM "
                "(then SIGKILL)",
                cid[:12],
                what,
                name,
            )
        return int(signal.SIGTERM)


def image_stop_signal(image_config: dict[str, Any]) -> str:
    cfg = image_config.get("config") or {}
    value = cfg.get("StopSignal") if isinstance(cfg, dict) else None
    return value if isinstance(value, str) else ""
