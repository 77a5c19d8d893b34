"""The default bytes store: a directory on the local filesystem.

Layout under the root::

    blobs/<algorithm>/<first two hex>/<hex>   content, named by digest, written once
    uploads/<session id>/data                  an upload session's staged bytes
    tmp/                                       small content on its way into blobs/

Content reaches ``blobs/`` only by ``rename`` after an ``fsync``, so a name there always holds
complete, verified bytes (ARCHITECTURE.md invariant 2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from dockyard.failpoints import storage_fault_point
from dockyard.registry.digests import ALGORITHMS, Digest
from dockyard.registry.ports import DependencyDown, DirectUploads, UploadSession

READ_SIZE = 1 << 20
WRITE_BATCH = 1 << 19  # at most two per open upload: 16 concurrent pushes hold <= 16 MiB
_IOV_MAX = 1024
_WRITER_THREADS = 8

_threads: concurrent.futures.ThreadPoolExecutor | None = None
_threads_pid = 0


def _writer_threads() -> concurrent.futures.ThreadPoolExecutor:
    """This process's staging-write threads (created after a worker forks, never inherited)."""
    global _threads, _threads_pid
    if _threads is None or _threads_pid != os.getpid():
        _threads = concurrent.futures.ThreadPoolExecutor(_WRITER_THREADS, "dockyard-staging")
        _threads_pid = os.getpid()
    return _threads


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """``writev`` every piece at the file's position, however many calls that takes."""
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class _FileStagingWriter:
    """Writes a session's bytes on a thread, one batch behind the event loop.

    While a thread writes batch N into the page cache, the loop receives and hashes batch N+1;
    done serially on the loop, those three were what bounded a push. At most two batches
    (twice WRITE_BATCH) are held per upload, and a write is never still running when the file
    is closed or the writer returns: the session's offset always describes bytes on the file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._batch: list[bytes] = []
        self._batched = 0
        self._running: concurrent.futures.Future[None] | None = None
        self._failed: OSError | None = None  # after a failed write nothing more is written

    async def write(self, data: bytes) -> None:
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= WRITE_BATCH:
            await self._hand_over()

    async def _hand_over(self) -> None:
        await self._wait()
        if self._failed is not None:
            # The file holds a prefix of the stream (a short write included); a later batch
            # written after it would leave a gap the session's offset could not describe.
            raise self._failed
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            self._running = _writer_threads().submit(_write_all, self._fd, batch)

    async def _wait(self) -> None:
        """Wait for the running write; if this task is cancelled meanwhile, still wait (briefly,
        blocking): the caller may release the session only once no write is in flight."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            concurrent.futures.wait([running])
            raise
        except OSError as exc:
            self._failed = exc
            raise

    async def close(self) -> int:
        try:
            storage_fault_point("staging.close")  # tests: the last batch is never written
            await self._hand_over()
            await self._wait()
            return os.lseek(self._fd, 0, os.SEEK_CUR)
        finally:
            if self._running is not None:  # defensive: the file must outlive every write
                concurrent.futures.wait([self._running])
            os.close(self._fd)


class FilesystemBlobStore:
    chunk_min_length: int | None = None
    direct: DirectUploads | None = None  # the bytes pass through the registry to the disk

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._uploads = root / "uploads"
        self._tmp = root / "tmp"
        for d in (self._blobs, self._uploads, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- content ---------------------------------------------------------------------------------

    def _path(self, digest: Digest) -> Path:
        # Digest.parse guarantees a registered algorithm and lowercase hex: no path tricks here.
        return self._blobs / digest.algorithm / digest.hex[:2] / digest.hex

    async def stat(self, digest: Digest) -> int | None:
        try:
            return os.stat(self._path(digest)).st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> Path | None:
        return self._path(digest)

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        with open(self._path(digest), "rb") as f:
            f.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                n = READ_SIZE if remaining is None else min(READ_SIZE, remaining)
                data = await loop.run_in_executor(None, f.read, n)
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data

    async def read_all(self, digest: Digest) -> bytes:
        return await asyncio.to_thread(self._path(digest).read_bytes)

    async def put(self, digest: Digest, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, digest, data)

    def _put_sync(self, digest: Digest, data: bytes) -> None:
        target = self._path(digest)
        if target.exists():
            return
        tmp = self._tmp / f"{uuid.uuid4()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._move_into_place(tmp, target)

    def _move_into_place(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        _fsync_dir(target.parent)

    async def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(digest))

    async def redirect_url(self, digest: Digest) -> str | None:
        return None

    async def iter_digests(self) -> AsyncIterator[Digest]:
        for algorithm in sorted(ALGORITHMS):
            base = self._blobs / algorithm
            if not base.is_dir():
                continue
            for prefix in sorted(base.iterdir()):
                for entry in sorted(prefix.iterdir()):
                    if entry.name.startswith(prefix.name):
                        yield Digest(algorithm, entry.name)
                    else:  # not where its name says: no digest (fsck reports it)
                        yield Digest(algorithm, f"{prefix.name}/{entry.name}")

    async def age(self, digest: Digest) -> float | None:
        try:
            return time.time() - os.stat(self._path(digest)).st_mtime
        except FileNotFoundError:
            return None

    # -- staging -----------------------------------------------------------------------------------

    def _staging(self, session: UploadSession) -> Path:
        return self._uploads / session.id / "data"

    async def staging_open(self, session: UploadSession) -> _FileStagingWriter:
        path = self._staging(session)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # Bytes past the recorded offset belong to a writer that died before recording them.
            # (Only then: a truncate is an inode change, i.e. a journal transaction, per PATCH.)
            if os.fstat(fd).st_size != session.offset:
                os.ftruncate(fd, session.offset)
            os.lseek(fd, session.offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return _FileStagingWriter(fd)

    async def staging_size(self, session: UploadSession) -> int | None:
        try:
            return os.stat(self._staging(session)).st_size
        except FileNotFoundError:
            return 0 if session.offset == 0 and not self._staging(session).parent.exists() else None

    async def staging_read(self, session: UploadSession) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        path = self._staging(session)
        if not path.exists():
            return
        with open(path, "rb") as f:
            remaining = session.offset
            while remaining > 0:
                data = await loop.run_in_executor(None, f.read, min(READ_SIZE * 8, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data

    async def staging_commit(self, session: UploadSession, digest: Digest) -> None:
        await asyncio.to_thread(self._commit_sync, session, digest)

    def _commit_sync(self, session: UploadSession, digest: Digest) -> None:
        path = self._staging(session)
        if not path.exists():
            # An empty blob that never got a PATCH: there is nothing staged to move.
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        with open(path, "rb+") as f:
            if os.fstat(f.fileno()).st_size != session.offset:
                f.truncate(session.offset)
            os.fsync(f.fileno())
        self._move_into_place(path, self._path(digest))

    async def staging_ids(self) -> list[str]:
        return sorted(entry.name for entry in self._uploads.iterdir() if entry.is_dir())

    async def close(self) -> None:
        """Nothing to release: files are opened per call."""

    async def check(self, write: bool = False) -> None:
        """The directory is there (a volume gone away fails this); ``write``: a file can be
        created in it. A full disk passes: pulls still work, pushes get 507."""
        try:
            if write:
                await asyncio.to_thread(_probe_write, self._tmp)
            else:
                os.stat(self._blobs)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return
            raise DependencyDown(
                "data_dir", f"{self.root} is not usable: {exc.strerror or exc}", final=True
            ) from exc

    async def staging_delete(self, session: UploadSession) -> None:
        await asyncio.to_thread(shutil.rmtree, self._uploads / session.id, True)


def _probe_write(directory: Path) -> None:
    path = directory / f"probe-{uuid.uuid4().hex}"
    try:
        with open(path, "wb") as f:
            f.write(b"dockyard")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
