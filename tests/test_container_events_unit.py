"""The container event stream's back-pressure: a client that stops reading is cut off."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from crispy import errors
from crispy.containers import manager as mgr


def _bare_manager() -> mgr.ContainerManager:
    m = mgr.ContainerManager.__new__(mgr.ContainerManager)
    m._subscribers = []
    m._lagging = set()
    return m


def test_a_lagging_subscriber_is_dropped_and_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mgr, "EVENT_BACKLOG", 3)
    m = _bare_manager()
    ctr = SimpleNamespace(id="c1", pod_id="p1")

    async def scenario() -> tuple[list[str], BaseException | None]:
        stream = m.events()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # subscribed
        m._emit(ctr, mgr.CREATED_EVENT)  # type: ignore[arg-type]
        got = [(await first).kind]
        for kind in ("started", "stopped", "deleted", "created", "started"):
            m._emit(ctr, kind)  # type: ignore[arg-type]
        assert m._subscribers == []  # cut off once 3 events were waiting
        err = None
        try:
            while True:
                got.append((await stream.__anext__()).kind)
        except errors.Unavailable as e:
            err = e
        await stream.aclose()
        return got, err

    got, err = asyncio.run(scenario())
    assert got == ["created", "started", "stopped", "deleted"]  # what was queued is delivered
    assert err is not None and "subscribe again" in str(err)
    assert m._lagging == set()


def test_a_reading_subscriber_gets_every_event() -> None:
    m = _bare_manager()
    ctr = SimpleNamespace(id="c1", pod_id="p1")

    async def scenario() -> list[str]:
        stream = m.events()
        got: list[str] = []

        async def read() -> None:
            async for ev in stream:
                got.append(ev.kind)
                if len(got) == 4:
                    return

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        for kind in ("created", "started", "stopped", "deleted"):
            m._emit(ctr, kind)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        await reader
        return got

    assert asyncio.run(scenario()) == ["created", "started", "stopped", "deleted"]
