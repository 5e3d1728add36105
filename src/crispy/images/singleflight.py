"""One task shared by every caller that needs the same result (one download per layer)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SharedTask(Generic[T]):
    """A task that runs while anyone waits for it.

    Each caller `join()`s; a caller that is cancelled (a kubelet deadline) stops
    waiting without disturbing the others, and when the last one leaves the work
    is cancelled, so nothing downloads for nobody. (A cancelled download keeps its
    partial blob on disk for the next pull to resume.)
    """

    def __init__(self, coro: Coroutine[Any, Any, T], name: str = "") -> None:
        self.task: asyncio.Task[T] = asyncio.create_task(coro, name=name or None)
        self.waiters = 0

    async def join(self) -> T:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        finally:
            self.waiters -= 1
            if self.waiters == 0 and not self.task.done():
                self.task.cancel()

    def done(self) -> bool:
        return self.task.done()
