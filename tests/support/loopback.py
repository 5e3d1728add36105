"""The shape every test server shares: a free port on 127.0.0.1, start/stop, `with`."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class LoopbackServer:
    """Subclasses set `port` in start() and back to None in stop()."""

    port: int | None = None

    def not_running(self) -> Exception:
        return RuntimeError(f"{type(self).__name__} is not running")

    @property
    def host(self) -> str:
        if self.port is None:
            raise self.not_running()
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
