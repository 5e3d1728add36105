"""Moving layer bytes from the network to the unpacker while they download.

The event loop receives chunks and `put`s them into a bounded `ChunkPipe`; a
worker thread pulls them through `CompressedSource` (which appends each new
chunk to the ingest file and hashes it), a decompressor, and `HashingReader`
(the diff ID), into the tar unpacker. The bound keeps memory flat however fast
the network is; the thread keeps tar parsing and file I/O off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

import isal.igzip
import zstandard

from crispy.images.content import Ingest

HIGH_WATER = 32  # chunks (aiohttp hands out up to ~64 KiB each)


class PipeClosed(Exception):
    """The producer gave up (cancelled or failed); the unpack must stop."""


class ChunkPipe:
    """Bounded, async producer → thread consumer queue of byte chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._space = asyncio.Event()
        self._space.set()
        self._eof = False
        self._error: BaseException | None = None

    async def put(self, chunk: bytes) -> None:
        await self._space.wait()
        with self._cond:
            if self._error is not None:
                raise PipeClosed(str(self._error))
            self._chunks.append(chunk)
            if len(self._chunks) >= HIGH_WATER:
                self._space.clear()
            self._cond.notify()

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._eof = True
            if error is not None and self._error is None:
                self._error = error
            self._cond.notify_all()
        self._space.set()

    def get(self) -> bytes:
        """Next chunk, b"" at end of stream; raises PipeClosed if the producer failed."""
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if self._error is not None:
                raise PipeClosed(str(self._error))
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if len(self._chunks) < HIGH_WATER // 2 and not self._space.is_set():
                self._loop.call_soon_threadsafe(self._space.set)
            return chunk

    def take_all(self) -> list[bytes]:
        """What is still queued: a cancelled download keeps these bytes too."""
        with self._cond:
            chunks = list(self._chunks)
            self._chunks.clear()
        return chunks

    def fail_consumer(self, error: BaseException) -> None:
        """The consumer died: make the producer's next put() raise."""
        with self._cond:
            if self._error is None:
                self._error = error
        self._loop.call_soon_threadsafe(self._space.set)


class _Reader(io.RawIOBase):
    """A read-only stream whose subclasses define read(); the rest follows from it."""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class CompressedSource(_Reader):
    """The compressed layer: first what an ingest already holds, then new chunks.

    New chunks are written to the ingest (which hashes them); replayed bytes are
    only hashed. A source over a stored blob (ingest None) just reads the file.
    """

    def __init__(
        self,
        replay: Iterator[bytes],
        pipe: ChunkPipe | None,
        ingest: Ingest | None,
    ) -> None:
        self._replay: Iterator[bytes] | None = replay
        self._pipe = pipe
        self._ingest = ingest
        self._buf = b""
        self.total = 0

    def _next(self) -> bytes:
        if self._replay is not None:
            chunk = next(self._replay, b"")
            if chunk:
                if self._ingest is not None:
                    self._ingest.hash(chunk)
                return chunk
            self._replay = None
        if self._pipe is None:
            return b""
        try:
            chunk = self._pipe.get()
        except PipeClosed:
            # Received but not yet unpacked: still worth keeping for the resume.
            if self._ingest is not None:
                for queued in self._pipe.take_all():
                    self._ingest.write(queued)
            raise
        if chunk and self._ingest is not None:
            self._ingest.write(chunk)
        return chunk

    def read(self, n: int = -1) -> bytes:
        if not self._buf:
            self._buf = self._next()
        if n is None or n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        self.total += len(out)
        return out


class HashingReader(_Reader):
    """Counts and hashes the uncompressed tar: its sha256 is the layer's diff ID."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n if n is not None and n >= 0 else 1 << 20)
        self._hash.update(data)
        self.total += len(data)
        return data

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def decompressor(source: Any, compression: str) -> Any:
    if compression == "gzip":
        # isa-l's inflate is several times faster than zlib's; handles multi-member gzip.
        return isal.igzip.GzipFile(fileobj=source, mode="rb")
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True, closefd=False
        )
    return source
