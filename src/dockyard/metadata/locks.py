"""The metadata store's locks (a facet mixed into it): one blob, a batch of blobs, a named job,
an upload session.

On SQLite they are ``flock`` files in the database's ``locks/`` directory, polled so the event
loop never blocks, dropped by the kernel with their process. On PostgreSQL they are advisory
locks on connections of their own (``metadata/pglocks.py``), dropped by the server with the
holder's connection. Either way a crashed holder never leaves a lock behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dockyard.registry.digests import Digest

if TYPE_CHECKING:
    from dockyard.metadata.pglocks import AdvisoryLocks


def _stripe(digest: Digest) -> str:
    """Which of 256 blob lock files guards ``digest``."""
    return hashlib.sha256(str(digest).encode()).hexdigest()[:2]


async def _flock_waiting(fd: int) -> None:
    """An exclusive ``flock`` on ``fd``, waited for without blocking the event loop."""
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


@asynccontextmanager
async def _try_flock(path: Path) -> AsyncIterator[bool]:
    """An exclusive ``flock`` if free now (False if not); the kernel drops it with its process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Locks:
    """The store's locks; the store provides the lock directory (SQLite) or advisory locks."""

    _lock_dir: Path | None
    _pg_locks: AdvisoryLocks | None

    @asynccontextmanager
    async def lock_blob(self, digest: Digest) -> AsyncIterator[None]:
        """On SQLite: one of 256 striped ``flock`` files. On PostgreSQL: an advisory lock (waited
        for) on a connection of its own."""
        if self._pg_locks is not None:
            async with self._pg_locks.hold("blob", str(digest), wait=True):
                yield
            return
        assert self._lock_dir is not None
        fd = os.open(self._lock_dir / f"blob-{_stripe(digest)}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await _flock_waiting(fd)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @asynccontextmanager
    async def lock_blobs(self, digests: Sequence[Digest]) -> AsyncIterator[None]:
        """Every lock ``lock_blob`` would take for each of ``digests``, held together (taken in
        one order: only the collector takes more than one, and one collector runs at a time)."""
        if self._pg_locks is not None:
            async with self._pg_locks.hold_many("blob", sorted({str(d) for d in digests})):
                yield
            return
        assert self._lock_dir is not None
        fds: list[int] = []
        try:
            for stripe in sorted({_stripe(d) for d in digests}):
                fd = os.open(self._lock_dir / f"blob-{stripe}", os.O_RDWR | os.O_CREAT, 0o644)
                fds.append(fd)
                await _flock_waiting(fd)
            yield
        finally:
            for fd in fds:
                os.close(fd)  # closing the only descriptor of the open file releases its flock

    def try_lock(self, name: str) -> AbstractAsyncContextManager[bool]:
        """A named lock (one GC run at a time, …) if free now."""
        return self._try_hold("named", name, f"named-{name}")

    def lock_upload(self, upload_id: str) -> AbstractAsyncContextManager[bool]:
        """One writer per session, if free now (its file goes with the session's row)."""
        return self._try_hold("upload", upload_id, upload_id)

    @asynccontextmanager
    async def _try_hold(self, kind: str, key: str, file_name: str) -> AsyncIterator[bool]:
        """The lock ``kind``/``key`` if free now: an advisory lock on PostgreSQL, else an
        ``flock`` on ``file_name`` in the lock directory."""
        if self._pg_locks is not None:
            async with self._pg_locks.hold(kind, key, wait=False) as held:
                yield held
            return
        assert self._lock_dir is not None
        async with _try_flock(self._lock_dir / file_name) as held:
            yield held
