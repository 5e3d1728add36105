"""The event stream behind GetContainerEvents, which kubelet's Evented PLEG builds pod status
from: one event per change of a container or of a pod sandbox (whose events carry the
sandbox's own id as `container_id`).

Each event is rendered when it happens, by the hook the CRI layer installs: it carries the
pod's sandbox status and all its containers' statuses as they were at that moment (a
deleted pod's last status), not as they are when the subscriber gets round to reading it.

Ordering: a subscriber is registered before its stream sends its response headers, and
from then on gets every change in the order the changes happened. A client that waits for
the headers and then lists misses nothing: each later change is in its stream.

Back-pressure: a subscriber's queue is bounded (events and bytes). One that falls behind
is dropped, with a warning, never waited for; it gets what was queued, then UNAVAILABLE,
and subscribes again (kubelet then relists).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crispy import errors

log = logging.getLogger(__name__)

# Event kinds, as the CRI names them.
CREATED = "created"
STARTED = "started"
STOPPED = "stopped"
DELETED = "deleted"

BACKLOG = 10000  # events queued for one subscriber
BACKLOG_BYTES = 16 << 20  # and their rendered size (a pod's annotations alone reach 256 KiB)


@dataclass(frozen=True)
class Event:
    container_id: str  # a sandbox event's is the pod's id
    pod_id: str
    kind: str
    at: int  # ns since the epoch
    payload: Any = None  # what the render hook made of the pod at that moment
    size: int = 0


# (pod id, the pod itself where the caller has it, e.g. once deleted) -> (payload, size)
Render = Callable[[str, Any], tuple[Any, int]]


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    size: int = 0
    dropped: bool = False


class EventBus:
    def __init__(self) -> None:
        self.render: Render | None = None
        self._subscribers: list[_Subscriber] = []

    def emit(self, container_id: str, pod_id: str, kind: str, pod: Any = None) -> None:
        if not self._subscribers:
            return  # nobody listens: nothing to render
        payload, size = self.render(pod_id, pod) if self.render else (None, 0)
        ev = Event(container_id, pod_id, kind, time.time_ns(), payload, size)
        for sub in list(self._subscribers):
            if sub.queue.qsize() >= BACKLOG or sub.size + size > BACKLOG_BYTES:
                # A client that stopped reading must not grow crispyd without bound, nor
                # slow anything down: cut it off.
                log.warning(
                    "events: a subscriber fell %d events (%d bytes) behind; dropping it",
                    sub.queue.qsize(),
                    sub.size,
                )
                sub.dropped = True
                self._subscribers.remove(sub)
                continue
            sub.size += size
            sub.queue.put_nowait(ev)

    def subscribe(self) -> Subscription:
        """Registered at once, not at the first read (see the ordering above); close() it."""
        sub = _Subscriber()
        self._subscribers.append(sub)
        return Subscription(self, sub)

    def _forget(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class Subscription:
    def __init__(self, bus: EventBus, sub: _Subscriber) -> None:
        self._bus = bus
        self._sub = sub

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        sub = self._sub
        if sub.dropped and sub.queue.empty():
            raise errors.Unavailable("the event stream fell too far behind; subscribe again")
        ev = await sub.queue.get()
        sub.size -= ev.size
        return ev

    def close(self) -> None:
        self._bus._forget(self._sub)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
