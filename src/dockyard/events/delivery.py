"""The delivery loop: every worker of every node runs one; a lock per target (a flock on SQLite,
an advisory lock on PostgreSQL) lets one of them deliver to a target at a time, cluster-wide.

A delivery is marked done only after the target said so, in its own transaction: a crash
between the two sends the event again (at least once, never lost). Each repository's events go
to a target in order; a failure holds back that repository's later events (not the others')
until the failed one is delivered or, after ``max_attempts``, dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dockyard.client.registry import FAULTS
from dockyard.events.sinks import DeliveryFailed
from dockyard.metadata.outbox import Delivery, EventLog
from dockyard.registry.ports import MetadataStore

if TYPE_CHECKING:
    from dockyard.config import EventsSettings

log = logging.getLogger("dockyard.events")


class Target(Protocol):
    """Where deliveries go: an HTTP sink or a replication rule."""

    name: str

    async def deliver(self, delivery: Delivery) -> None:
        """Deliver or raise (any exception is a failed attempt)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial: float
    cap: float
    max_attempts: int

    def delay(self, attempts: int) -> float:
        """After the ``attempts``-th failure: doubling from ``initial`` up to ``cap``, jittered down
        by up to a fifth so a crowd of failures spreads out."""
        base: float = min(self.cap, self.initial * 2.0 ** min(attempts - 1, 40))
        return base * random.uniform(0.8, 1.0)


class Deliverer:
    """Works through the outbox for ``targets`` until cancelled."""

    def __init__(
        self,
        meta: MetadataStore,
        events: EventLog,
        targets: Sequence[Target],
        settings: EventsSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._meta = meta
        self._events = events
        self._targets = list(targets)
        self._settings = settings
        self._backoff = Backoff(
            settings.retry_initial_seconds, settings.retry_max_seconds, settings.max_attempts
        )
        self._clock = clock
        self._wakeups = {t.name: asyncio.Event() for t in self._targets}

    def wake(self) -> None:
        """Something was written here: look now rather than at the next poll."""
        for event in self._wakeups.values():
            event.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._serve(t)) for t in self._targets]
        tasks.append(asyncio.create_task(self._purge_loop()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for target in self._targets:
                with contextlib.suppress(Exception):
                    await target.close()

    async def _serve(self, target: Target) -> None:
        wakeup = self._wakeups[target.name]
        while True:
            try:
                async with self._meta.try_lock(f"events.{target.name}") as held:
                    if held:
                        while await self.deliver_due(target):
                            pass
            except Exception:  # the database is down, say: try again at the next poll
                log.exception("delivering events to %s failed; trying again", target.name)
            # (not wait_for: on Python 3.11 it can swallow a cancellation that races the timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_seconds):
                    await wakeup.wait()
            if wakeup.is_set():
                wakeup.clear()
                await asyncio.sleep(0.05)  # let the transaction that woke us commit

    async def deliver_due(self, target: Target) -> bool:
        """One round: each repository's due deliveries, in order. True when any was delivered
        or dead-lettered (there may be more to do at once)."""
        repositories = await self._events.due_repositories(target.name, self._clock())
        if not repositories:
            return False
        progress = False
        gate = asyncio.Semaphore(self._settings.concurrency)

        async def run(repository: str) -> None:
            nonlocal progress
            async with gate:
                for delivery in await self._events.pending_run(target.name, repository):
                    if delivery.next_attempt_at > self._clock():
                        return  # the head waits for its next attempt; the rest wait behind it
                    if await self._attempt(target, delivery):
                        progress = True
                    else:
                        return

        await asyncio.gather(*(run(r) for r in repositories))
        return progress

    async def _attempt(self, target: Target, delivery: Delivery) -> bool:
        """Deliver one; True when the queue may move on (delivered, or now dead)."""
        try:
            await target.deliver(delivery)
        except Exception as exc:
            attempts = delivery.attempts + 1
            dead = attempts >= self._backoff.max_attempts
            now = self._clock()
            error = str(exc) or type(exc).__name__
            if not isinstance(exc, (DeliveryFailed, *FAULTS)):
                log.exception("event %s to %s failed", delivery.event_id, target.name)
            else:
                log.info(
                    "event %s to %s failed (attempt %d): %s", delivery.event_id, target.name, attempts, error
                )
            await self._events.mark_failed(
                target.name, delivery.seq, attempts, error, now + self._backoff.delay(attempts), dead, now
            )
            if dead:
                log.warning(
                    "event %s to %s dead-lettered after %d attempts", delivery.event_id, target.name, attempts
                )
            return dead
        await self._events.mark_delivered(target.name, delivery.seq, self._clock())
        return True

    async def _purge_loop(self) -> None:
        """Drop what was delivered longer ago than the retention time (one node at a time)."""
        interval = max(1.0, min(300.0, self._settings.retention_seconds / 10 or 1.0))
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._meta.try_lock("events.purge") as held:
                    if held:
                        await self._events.purge(self._clock() - self._settings.retention_seconds)
            except Exception:
                log.exception("purging delivered events failed")
