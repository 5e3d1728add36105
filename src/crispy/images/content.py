"""The content store: blobs by digest under content/blobs/sha256/<hex>.

A blob becomes visible only complete and verified: bytes go to an ingest file
(content/ingest/<hex>/data), and only after its size and digest match is it
fsynced and renamed into place. An ingest left by a cancelled or failed pull
stays on disk, so the next pull of that blob resumes where it stopped; one that
already holds every byte (the pull stopped between the last byte and the commit)
is verified and committed from disk (`commit_complete`), or discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from typing import BinaryIO

from crispy.errors import InvalidArgument
from crispy.images.manifest import check_digest
from crispy.testhook import crash_point

CHUNK = 1 << 20


class DigestMismatch(InvalidArgument):
    """What arrived is not what the digest promised."""


class SizeMismatch(DigestMismatch):
    """The registry's blob is not as long as its descriptor says: no resume can fix it."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "content")
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.ingests = os.path.join(self.root, "ingest")
        os.makedirs(self.blobs, mode=0o700, exist_ok=True)
        os.makedirs(self.ingests, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self.blobs, check_digest(digest).split(":", 1)[1])

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        return os.stat(self.path(digest)).st_size

    def read(self, digest: str) -> bytes:
        with open(self.path(digest), "rb") as f:
            return f.read()

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def write(self, digest: str, data: bytes) -> None:
        """Store a small blob held in memory (manifests, configs), verified first."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != check_digest(digest):
            raise DigestMismatch(f"content of {digest} has digest {actual}")
        if self.exists(digest):
            return
        tmp = os.path.join(self.blobs, f".tmp-{digest[7:]}-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("content:blob-written")
        os.rename(tmp, self.path(digest))
        fsync_dir(self.blobs)

    def ingest(self, digest: str, size: int) -> Ingest:
        return Ingest(self, check_digest(digest), size)

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))
        self.discard_ingest(digest)

    def discard_ingest(self, digest: str) -> None:
        shutil.rmtree(os.path.join(self.ingests, digest.split(":", 1)[1]), ignore_errors=True)

    def list(self) -> Iterator[str]:
        for name in os.listdir(self.blobs):
            if len(name) == 64 and not name.startswith("."):
                yield "sha256:" + name

    def stale_ingests(self, older_than: float) -> Iterator[str]:
        """Ingests untouched for `older_than` seconds: pulls nobody came back for."""
        now = time.time()
        for name in os.listdir(self.ingests):
            data = os.path.join(self.ingests, name, "data")
            try:
                mtime = os.stat(data).st_mtime
            except FileNotFoundError:
                mtime = 0
            if now - mtime > older_than:
                yield "sha256:" + name

    def remove_temp_files(self) -> None:
        """Temp files of writes a crash interrupted; never visible as blobs."""
        for name in os.listdir(self.blobs):
            if name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.blobs, name))


class Ingest:
    """One blob being written, resumable: `offset` bytes are already on disk.

    Not thread-safe; one writer at a time (the pull code shares one download per
    digest). The hash covers the bytes already on disk once `rehash()` has run.
    """

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.dir = os.path.join(store.ingests, digest.split(":", 1)[1])
        self.path = os.path.join(self.dir, "data")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._f = open(self.path, "ab")  # noqa: SIM115 - closed by commit/close
        self.offset = self._f.tell()
        if self.offset > size:  # junk from elsewhere: start over
            self.reset()
        self.hasher = hashlib.sha256()
        self.hashed = 0

    def partial_chunks(self) -> Iterator[bytes]:
        """The bytes already on disk, for replaying through the unpacker and the hash."""
        with open(self.path, "rb") as f:
            remaining = self.offset
            while remaining:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def rehash(self) -> None:
        """Hash the bytes already on disk (instead of replaying them through `hash`)."""
        self._f.flush()
        self.hasher = hashlib.sha256()
        self.hashed = 0
        for chunk in self.partial_chunks():
            self.hash(chunk)

    def commit_complete(self) -> bool:
        """An ingest holding `size` bytes: commit it if its digest is right (True), else
        discard it (False) so the blob is downloaded afresh."""
        self.rehash()
        try:
            self.commit()
        except DigestMismatch:
            self.discard()
            return False
        return True

    def hash(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.hashed += len(chunk)

    def write(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.size:
            raise SizeMismatch(
                f"blob {self.digest}: the registry sent more than the {self.size} bytes "
                "its descriptor declares"
            )
        self._f.write(chunk)
        # Into the page cache now: a crispyd killed after the last byte leaves it all on
        # disk for the next pull to commit, with nothing to ask the registry for.
        self._f.flush()
        self.offset += len(chunk)
        self.hash(chunk)

    def reset(self) -> None:
        self._f.truncate(0)
        self._f.seek(0)
        self.offset = 0
        self.hasher = hashlib.sha256()
        self.hashed = 0

    def flush(self) -> None:
        self._f.flush()

    def commit(self) -> None:
        """Verify size and digest, then make the blob visible atomically."""
        self._f.flush()
        if self.offset != self.size:
            raise DigestMismatch(
                f"blob {self.digest}: got {self.offset} bytes, descriptor says {self.size}"
            )
        if self.hashed != self.offset:
            raise RuntimeError("ingest committed without hashing every byte")
        actual = "sha256:" + self.hasher.hexdigest()
        if actual != self.digest:
            self.close()
            self.store.discard_ingest(self.digest)
            raise DigestMismatch(f"blob {self.digest} arrived with digest {actual}")
        os.fsync(self._f.fileno())
        self._f.close()
        os.rename(self.path, self.store.path(self.digest))
        fsync_dir(self.store.blobs)
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Keep what is on disk for a later resume."""
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    def discard(self) -> None:
        self.close()
        self.store.discard_ingest(self.digest)
