"""Hashing a stream on a thread, one batch behind the event loop (ARCHITECTURE.md "Hashing").

``hashlib`` releases the GIL for large buffers, so while a thread hashes batch N the loop
receives (over TLS: decrypts) batch N+1. Done on the loop, hashing was a fifth of a push's
time there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

from dockyard.registry.digests import Hasher

HASH_BATCH = 1 << 20  # a thread hop per MiB; smaller rests are hashed in place
_THREADS = 4

_threads: concurrent.futures.ThreadPoolExecutor | None = None
_threads_pid = 0


def _hashing_threads() -> concurrent.futures.ThreadPoolExecutor:
    """This process's hashing threads (created after a worker forks, never inherited)."""
    global _threads, _threads_pid
    if _threads is None or _threads_pid != os.getpid():
        _threads = concurrent.futures.ThreadPoolExecutor(_THREADS, "dockyard-hashing")
        _threads_pid = os.getpid()
    return _threads


def _update_all(hasher: Hasher, pieces: list[bytes]) -> None:
    for piece in pieces:
        hasher.update(piece)


class BackgroundHasher:
    """Feeds a hasher on a thread, in order, at most one batch in flight.

    The hasher may be read, kept or dropped only once ``finish`` has returned it: then it has
    seen every byte given to ``update``, and no thread touches it any more.
    """

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher
        self._batch: list[bytes] = []
        self._batched = 0
        self._running: concurrent.futures.Future[None] | None = None

    async def update(self, data: bytes) -> None:
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= HASH_BATCH:
            await self._wait()
            batch, self._batch, self._batched = self._batch, [], 0
            self._running = _hashing_threads().submit(_update_all, self._hasher, batch)

    async def finish(self) -> Hasher:
        await self._wait()
        batch, self._batch, self._batched = self._batch, [], 0
        _update_all(self._hasher, batch)  # less than a batch: not worth a thread hop
        return self._hasher

    async def _wait(self) -> None:
        """Wait for the batch in flight. If this task is cancelled meanwhile, still wait (briefly,
        blocking): the batch runs to its end either way, and the hasher must stay whole."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            await asyncio.shield(asyncio.wrap_future(running))
        except asyncio.CancelledError:
            concurrent.futures.wait([running])
            raise
