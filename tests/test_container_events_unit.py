"""The event bus behind GetContainerEvents (crispy/events.py): back-pressure and rendering."""

from __future__ import annotations

import asyncio

import pytest

from crispy import errors, events
from crispy.events import EventBus


def test_a_lagging_subscriber_is_dropped_and_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "BACKLOG", 3)
    bus = EventBus()

    async def scenario() -> tuple[list[str], BaseException | None]:
        with bus.subscribe() as sub:
            bus.emit("c1", "p1", events.CREATED)
            got = [(await sub.__anext__()).kind]
            for kind in ("started", "stopped", "deleted", "created", "started"):
                bus.emit("c1", "p1", kind)
            assert bus.subscribers == 0  # cut off once 3 events were waiting
            err = None
            try:
                async for ev in sub:
                    got.append(ev.kind)
            except errors.Unavailable as e:
                err = e
            return got, err

    got, err = asyncio.run(scenario())
    assert got == ["created", "started", "stopped", "deleted"]  # what was queued is delivered
    assert err is not None and "subscribe again" in str(err)


def test_the_backlog_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "BACKLOG_BYTES", 1000)
    bus = EventBus()
    bus.render = lambda pod_id, pod: ("a big pod", 400)
    with bus.subscribe():
        bus.emit("c1", "p1", events.CREATED)
        bus.emit("c1", "p1", events.STARTED)
        assert bus.subscribers == 1
        bus.emit("c1", "p1", events.STOPPED)  # 1200 bytes waiting: too many
        assert bus.subscribers == 0


def test_events_are_rendered_when_they_happen_and_only_if_someone_listens() -> None:
    bus = EventBus()
    state = {"p1": "ready"}
    rendered: list[str] = []

    def render(pod_id: str, pod: object) -> tuple[str, int]:
        rendered.append(pod_id)
        return str(pod or state[pod_id]), 1

    bus.render = render
    bus.emit("c0", "p1", events.CREATED)  # nobody subscribed: not even rendered
    assert rendered == []

    async def scenario() -> list[tuple[str, object]]:
        with bus.subscribe() as sub:
            bus.emit("c1", "p1", events.CREATED)
            state["p1"] = "notready"
            bus.emit("p1", "p1", events.STOPPED)
            bus.emit("p1", "p1", events.DELETED, pod="last state")
            return [(ev.kind, ev.payload) for ev in [await sub.__anext__() for _ in range(3)]]

    assert asyncio.run(scenario()) == [
        ("created", "ready"),
        ("stopped", "notready"),
        ("deleted", "last state"),
    ]
    assert bus.subscribers == 0  # closed with its `with`


def test_a_subscriber_is_registered_before_its_first_read() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    bus.emit("c1", "p1", events.CREATED)  # before anyone awaited anything
    got = asyncio.run(sub.__anext__())
    sub.close()
    assert got.kind == "created" and bus.subscribers == 0
