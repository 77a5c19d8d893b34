"""The events outbox: events written in the transaction of the change they report, and the queue
of deliveries per sink that the delivery loop (``dockyard.events.delivery``) works through.

An event is a CloudEvents 1.0 envelope, fixed when written (id, time, source and all), so every
delivery and every redelivery sends the same bytes. With the event, one delivery row per sink
whose filter wants it: a sink added later does not receive the past; a sink removed keeps its
rows (they show in ``dockyard events list`` until purged).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from dockyard.metadata import schema as s
from dockyard.registry.ports import ManifestRecord

TYPE_PREFIX = "dev.dockyard."
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass(frozen=True)
class Destination:
    """Where events may go (a sink, or a replication rule): its name and what it wants."""

    name: str
    wants: Callable[[str, str], bool]  # (type without prefix, repository) -> bool


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one sink."""

    sink: str
    seq: int
    event_id: str
    type: str
    repository: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    delivered_at: float | None
    last_error: str | None
    body: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "seq": self.seq,
            "id": self.event_id,
            "type": self.type,
            "repository": self.repository,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at,
            "delivered_at": self.delivered_at,
            "last_error": self.last_error,
        }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Outbox:
    """Writes events into the caller's transaction (the store calls it at each change)."""

    def __init__(
        self,
        source: str,
        destinations: Sequence[Destination],
        manifest_pulls: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.destinations = list(destinations)
        self.manifest_pulls = manifest_pulls
        self._clock = clock
        #: called by the store once a transaction wrote events: wakes this process's deliverer
        self.on_write: Callable[[], None] | None = None

    def written(self) -> None:
        """Events were written (the store calls this in the event loop's thread)."""
        if self.on_write is not None:
            self.on_write()

    def add(self, conn: Connection, type_: str, repository: str, data: dict[str, Any]) -> None:
        now = self._clock()
        event_id = str(uuid.uuid4())
        envelope = {
            "specversion": "1.0",
            "id": event_id,
            "type": TYPE_PREFIX + type_,
            "source": self.source,
            "subject": repository,
            "time": _iso(now),
            "datacontenttype": "application/json",
            "data": {"repository": repository, **data},
        }
        result = conn.execute(
            s.events.insert().values(
                id=event_id,
                type=type_,
                repository=repository,
                created_at=now,
                body=json.dumps(envelope, separators=(",", ":")),
            )
        )
        assert result.inserted_primary_key is not None
        seq = result.inserted_primary_key[0]
        rows = [
            {
                "sink": d.name,
                "seq": seq,
                "repository": repository,
                "state": PENDING,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for d in self.destinations
            if d.wants(type_, repository)
        ]
        if rows:
            conn.execute(s.event_deliveries.insert(), rows)

    # -- what the store reports (one call per change, inside its transaction; synchronous: the
    # store runs them in its writer thread, or through ``AsyncConnection.run_sync``) --------------------

    def manifest_pushed(
        self, conn: Connection, repository: str, record: ManifestRecord, tags: Sequence[str]
    ) -> None:
        data: dict[str, Any] = {
            "digest": str(record.digest),
            "mediaType": record.media_type,
            "size": record.size,
            "tags": list(tags),
        }
        if record.artifact_type:
            data["artifactType"] = record.artifact_type
        if record.subject is not None:
            data["subject"] = str(record.subject)
        self.add(conn, "manifest.pushed", repository, data)

    def manifest_deleted(
        self, conn: Connection, repository: str, digest: str, tags: Sequence[str], reason: str = "delete"
    ) -> None:
        data = {"digest": digest, "tags": sorted(tags), "reason": reason}
        self.add(conn, "manifest.deleted", repository, data)

    def tag_deleted(
        self, conn: Connection, repository: str, tag: str, digest: str, reason: str = "delete"
    ) -> None:
        self.add(conn, "tag.deleted", repository, {"tag": tag, "digest": digest, "reason": reason})

    def repository_deleted(self, conn: Connection, repository: str) -> None:
        self.add(conn, "repository.deleted", repository, {})

    def blob_mounted(
        self, conn: Connection, repository: str, digest: str, size: int, source: str | None
    ) -> None:
        self.add(conn, "blob.mounted", repository, {"digest": digest, "size": size, "from": source})

    def manifest_pulled(
        self, conn: Connection, repository: str, record: ManifestRecord, reference: str
    ) -> None:
        data = {
            "digest": str(record.digest),
            "mediaType": record.media_type,
            "size": record.size,
            "reference": reference,
        }
        self.add(conn, "manifest.pulled", repository, data)


_DELIVERY_COLUMNS = (
    s.event_deliveries.c.sink,
    s.event_deliveries.c.seq,
    s.events.c.id,
    s.events.c.type,
    s.event_deliveries.c.repository,
    s.event_deliveries.c.state,
    s.event_deliveries.c.attempts,
    s.event_deliveries.c.created_at,
    s.event_deliveries.c.next_attempt_at,
    s.event_deliveries.c.delivered_at,
    s.event_deliveries.c.last_error,
    s.events.c.body,
)


def _delivery(row: Any) -> Delivery:
    return Delivery(*row)


def _joined() -> Any:
    d = s.event_deliveries
    return select(*_DELIVERY_COLUMNS).join(s.events, s.events.c.seq == d.c.seq)


class EventLog:
    """The delivery queue: what is due, what was delivered, what failed; for the delivery loop,
    the CLI and /metrics. Every change of a delivery's state is one transaction."""

    def __init__(
        self,
        read: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]],
        insert: Callable[[Any], Any],
    ) -> None:
        self._read = read
        self._begin = begin
        self._insert = insert

    async def due_repositories(self, sink: str, now: float, limit: int = 1000) -> list[str]:
        """Repositories whose oldest pending delivery to ``sink`` is due (a repository's later
        events wait behind its head, whatever their own times)."""
        d = s.event_deliveries
        heads = (
            select(func.min(d.c.seq).label("seq"))
            .where(d.c.sink == sink, d.c.state == PENDING)
            .group_by(d.c.repository)
            .subquery()
        )
        q = (
            select(d.c.repository)
            .join(heads, heads.c.seq == d.c.seq)
            .where(d.c.sink == sink, d.c.next_attempt_at <= now)
            .order_by(d.c.seq)
            .limit(limit)
        )
        async with self._read() as conn:
            return list((await conn.execute(q)).scalars())

    async def pending_run(self, sink: str, repository: str, limit: int = 100) -> list[Delivery]:
        """A repository's pending deliveries to ``sink``, oldest first."""
        d = s.event_deliveries
        q = (
            _joined()
            .where(d.c.sink == sink, d.c.repository == repository, d.c.state == PENDING)
            .order_by(d.c.seq)
            .limit(limit)
        )
        async with self._read() as conn:
            return [_delivery(r) for r in await conn.execute(q)]

    async def mark_delivered(self, sink: str, seq: int, now: float) -> None:
        d = s.event_deliveries
        async with self._begin() as conn:
            result = await conn.execute(
                update(d)
                .where(d.c.sink == sink, d.c.seq == seq, d.c.state == PENDING)
                .values(state=DELIVERED, delivered_at=now, attempts=d.c.attempts + 1, last_error=None)
            )
            if result.rowcount:
                await self._count(conn, sink, delivered=1, last_success_at=now, last_error=None)

    async def mark_failed(
        self, sink: str, seq: int, attempts: int, error: str, next_attempt_at: float, dead: bool, now: float
    ) -> None:
        d = s.event_deliveries
        async with self._begin() as conn:
            result = await conn.execute(
                update(d)
                .where(d.c.sink == sink, d.c.seq == seq, d.c.state == PENDING)
                .values(
                    state=DEAD if dead else PENDING,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    last_error=error[:2000],
                )
            )
            if result.rowcount:
                await self._count(
                    conn, sink, failed=1, dead=1 if dead else 0, last_failure_at=now, last_error=error[:2000]
                )

    async def _count(self, conn: AsyncConnection, sink: str, **values: Any) -> None:
        st = s.event_sink_stats
        increments = {k: values.pop(k, 0) for k in ("delivered", "failed", "dead")}
        stmt = self._insert(st).values(sink=sink, **increments, **values)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[st.c.sink],
                set_={**{k: st.c[k] + v for k, v in increments.items()}, **values},
            )
        )

    async def record_run(self, name: str, copied: int, error: str | None, now: float) -> None:
        """A scheduled sync's outcome, counted like deliveries (copied tags, failed runs)."""
        async with self._begin() as conn:
            if error is None:
                await self._count(conn, name, delivered=copied, last_success_at=now, last_error=None)
            else:
                await self._count(
                    conn, name, delivered=copied, failed=1, last_failure_at=now, last_error=error[:2000]
                )

    async def last_run(self, name: str) -> float | None:
        """When a scheduled sync last finished, on any node."""
        st = s.event_sink_stats
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(st.c.last_success_at, st.c.last_failure_at).where(st.c.sink == name)
                )
            ).first()
        if row is None:
            return None
        times = [float(x) for x in row if x is not None]
        return max(times) if times else None

    async def list(
        self,
        sink: str | None = None,
        state: str | None = None,
        repository: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries, newest first."""
        d = s.event_deliveries
        q = _joined().order_by(d.c.seq.desc(), d.c.sink).limit(limit)
        if sink is not None:
            q = q.where(d.c.sink == sink)
        if state is not None:
            q = q.where(d.c.state == state)
        if repository is not None:
            q = q.where(d.c.repository == repository)
        async with self._read() as conn:
            return [_delivery(r) for r in await conn.execute(q)]

    async def redeliver(
        self, now: float, sink: str | None = None, state: str = DEAD, seqs: Sequence[int] = ()
    ) -> int:
        """Queue deliveries again (dead letters, by default), from their first attempt."""
        d = s.event_deliveries
        condition = [d.c.state == state]
        if sink is not None:
            condition.append(d.c.sink == sink)
        if seqs:
            condition.append(d.c.seq.in_(list(seqs)))
        async with self._begin() as conn:
            result = await conn.execute(
                update(d).where(and_(*condition)).values(state=PENDING, attempts=0, next_attempt_at=now)
            )
            return int(result.rowcount or 0)

    async def purge(self, delivered_before: float, dead: bool = False, sink: str | None = None) -> int:
        """Drop deliveries done before ``delivered_before`` (and dead letters, with ``dead``), then
        events no delivery needs any more and older than that. Returns the deliveries dropped."""
        d, e = s.event_deliveries, s.events
        done = and_(d.c.state == DELIVERED, d.c.delivered_at < delivered_before)
        condition = done if not dead else (done | (d.c.state == DEAD))
        if sink is not None:
            condition = and_(condition, d.c.sink == sink)
        async with self._begin() as conn:
            result = await conn.execute(delete(d).where(condition))
            await conn.execute(
                delete(e).where(
                    e.c.created_at < delivered_before,
                    ~select(d.c.seq).where(d.c.seq == e.c.seq).exists(),
                )
            )
            return int(result.rowcount or 0)

    async def sink_figures(self, now: float) -> dict[str, dict[str, float]]:
        """Per sink: pending, dead, oldest pending age (seconds), and the counters."""
        d, st = s.event_deliveries, s.event_sink_stats
        figures: dict[str, dict[str, float]] = {}
        async with self._read() as conn:
            rows = await conn.execute(
                select(d.c.sink, d.c.state, func.count(), func.min(d.c.created_at))
                .where(d.c.state != DELIVERED)
                .group_by(d.c.sink, d.c.state)
            )
            for sink, state, count, oldest in rows:
                f = figures.setdefault(sink, {})
                f[state] = float(count)
                if state == PENDING:
                    f["oldest_pending_age"] = max(0.0, now - float(oldest))
            for row in await conn.execute(select(st)):
                f = figures.setdefault(row.sink, {})
                f["delivered_total"] = float(row.delivered)
                f["failed_total"] = float(row.failed)
                f["dead_total"] = float(row.dead)
                if row.last_success_at is not None:
                    f["last_success"] = float(row.last_success_at)
                if row.last_failure_at is not None:
                    f["last_failure"] = float(row.last_failure_at)
        return figures

    async def last_errors(self) -> dict[str, str]:
        st = s.event_sink_stats
        async with self._read() as conn:
            rows = await conn.execute(select(st.c.sink, st.c.last_error))
            return {sink: err for sink, err in rows if err}
