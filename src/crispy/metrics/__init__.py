"""crispyd's own metrics: the light hooks the daemon's code records through.

`[metrics] address` turns on an HTTP endpoint serving them in the Prometheus text
format (see `crispy.metrics.prometheus`). While it runs, its `Metrics` is the
process's current one: the CRI call wrappers (cri/interceptor.py) call `record_rpc`,
and image pulls `record_pull` (the daemon puts it on the image service's `on_pull`
hooks: images/ sits below metrics/ and does not import it); these do nothing when no
endpoint is configured. This
module imports nothing heavy, so the CLI, which shares cri/interceptor.py's imports,
does not pay for prometheus-client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crispy.metrics.prometheus import Metrics

_current: Metrics | None = None


def current() -> Metrics | None:
    return _current


def set_current(metrics: Metrics | None) -> None:
    global _current
    _current = metrics


def record_rpc(service: str, method: str, code: str, seconds: float) -> None:
    """One gRPC call ended with status `code` (a StatusCode name: OK, NOT_FOUND...)."""
    m = _current
    if m is not None:
        m.observe_rpc(service, method, code, seconds)


def record_pull(seconds: float) -> None:
    """One image pull succeeded after `seconds`."""
    m = _current
    if m is not None:
        m.observe_pull(seconds)


def record_stream(kind: str, transport: str, delta: int) -> None:
    """A streaming session (exec, attach, portforward over spdy or websocket) began (+1)
    or ended (-1)."""
    m = _current
    if m is not None:
        m.observe_stream(kind, transport, delta)


__all__ = ["current", "record_pull", "record_rpc", "record_stream", "set_current"]
