"""The facts the browsing pages show: repository summaries, tags by last push, referrer counts,
collection history and open upload sessions (a facet of the metadata store, mixed into it)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, select, union_all

from dockyard.metadata import schema as s
from dockyard.metadata.faults import GuardedEngine
from dockyard.registry.digests import Digest
from dockyard.registry.ports import GcRun, RepositorySummary, TagSummary, UploadSession


def _last_pushes() -> Select[tuple[str, float]]:
    """Per repository, when a manifest was last pushed or a tag last moved."""
    events = union_all(
        select(s.tags.c.repository.label("repository"), s.tags.c.updated_at.label("at")),
        select(s.manifests.c.repository.label("repository"), s.manifests.c.created_at.label("at")),
    ).subquery()
    return select(events.c.repository, func.max(events.c.at).label("at")).group_by(events.c.repository)


class BrowsingQueries:
    """Read-only queries for people browsing; the store provides ``_read``."""

    _read: GuardedEngine

    async def repository_names(
        self,
        limit: int,
        *,
        after: str | None = None,
        offset: int = 0,
        containing: str | None = None,
        by: str = "name",
    ) -> list[str]:
        """A page of names: by name after ``after``, or by last push (newest first) from
        ``offset``; only names containing ``containing`` when it is given."""
        r = s.repositories
        if by == "pushed":
            last = _last_pushes().subquery()
            q = (
                select(r.c.name)
                .outerjoin(last, last.c.repository == r.c.name)
                .order_by(last.c.at.desc().nulls_last(), r.c.name)
                .offset(offset)
            )
        else:
            q = select(r.c.name).order_by(r.c.name)
            if after:
                q = q.where(r.c.name > after)
        if containing:
            q = q.where(r.c.name.contains(containing, autoescape=True))
        async with self._read.connect() as conn:
            return list((await conn.execute(q.limit(limit))).scalars())

    async def repository_summaries(self, names: Sequence[str]) -> dict[str, RepositorySummary]:
        if not names:
            return {}
        t, m, rb, b = s.tags, s.manifests, s.repository_blobs, s.blobs
        counts = {n: {"tags": 0, "manifests": 0, "bytes": 0} for n in names}
        pushed_at: dict[str, float | None] = dict.fromkeys(names)
        by_repository = [t.c.repository]
        queries = [
            (
                "tags",
                select(t.c.repository, func.count())
                .where(t.c.repository.in_(names))
                .group_by(*by_repository),
            ),
            (
                "manifests",
                select(m.c.repository, func.count(), func.coalesce(func.sum(m.c.size), 0))
                .where(m.c.repository.in_(names))
                .group_by(m.c.repository),
            ),
            (
                "blobs",
                select(rb.c.repository, func.coalesce(func.sum(b.c.size), 0))
                .join(b, b.c.digest == rb.c.digest)
                .where(rb.c.repository.in_(names))
                .group_by(rb.c.repository),
            ),
        ]
        last = _last_pushes().subquery()
        pushed = select(last.c.repository, last.c.at).where(last.c.repository.in_(names))
        async with self._read.connect() as conn:
            for kind, q in queries:
                for row in await conn.execute(q):
                    entry = counts[row[0]]
                    if kind == "tags":
                        entry["tags"] = int(row[1])
                    elif kind == "manifests":
                        entry["manifests"] = int(row[1])
                        entry["bytes"] += int(row[2])
                    else:
                        entry["bytes"] += int(row[1])
            for name, at in await conn.execute(pushed):
                pushed_at[name] = None if at is None else float(at)
        return {
            n: RepositorySummary(n, e["tags"], e["manifests"], e["bytes"], pushed_at[n])
            for n, e in counts.items()
        }

    async def tag_summaries(
        self, repository: str, limit: int, offset: int = 0, by: str = "pushed"
    ) -> list[TagSummary]:
        t = s.tags
        q = select(t.c.name, t.c.digest, t.c.updated_at).where(t.c.repository == repository)
        q = q.order_by(t.c.name) if by == "name" else q.order_by(t.c.updated_at.desc(), t.c.name)
        async with self._read.connect() as conn:
            rows = await conn.execute(q.offset(offset).limit(limit))
            return [TagSummary(name, Digest.parse(digest), float(at)) for name, digest, at in rows]

    async def referrer_counts(self, repository: str, subjects: Sequence[Digest]) -> dict[Digest, int]:
        if not subjects:
            return {}
        m = s.manifests
        q = (
            select(m.c.subject, func.count())
            .where(m.c.repository == repository, m.c.subject.in_([str(d) for d in subjects]))
            .group_by(m.c.subject)
        )
        async with self._read.connect() as conn:
            return {Digest.parse(subject): int(n) for subject, n in await conn.execute(q)}

    async def gc_history(self, limit: int) -> list[GcRun]:
        g = s.gc_runs
        q = select(g).order_by(g.c.id.desc()).limit(limit)
        async with self._read.connect() as conn:
            return [
                GcRun(
                    started_at=float(row.started_at),
                    duration=float(row.duration),
                    dry_run=bool(row.dry_run),
                    manifests_deleted=int(row.manifests_deleted),
                    tags_deleted=int(row.tags_deleted),
                    links_deleted=int(row.links_deleted),
                    blobs_deleted=int(row.blobs_deleted),
                    bytes_freed=int(row.bytes_freed),
                )
                for row in await conn.execute(q)
            ]

    async def recent_uploads(self, limit: int) -> list[UploadSession]:
        """Open upload sessions, the most recently active first."""
        u = s.uploads
        q = (
            select(u.c.id, u.c.repository, u.c.staged_bytes, u.c.created_at, u.c.updated_at, u.c.owner)
            .order_by(u.c.updated_at.desc())
            .limit(limit)
        )
        async with self._read.connect() as conn:
            return [
                UploadSession(
                    id=row.id,
                    repository=row.repository,
                    offset=int(row.staged_bytes),
                    created_at=float(row.created_at),
                    updated_at=float(row.updated_at),
                    owner=row.owner,
                )
                for row in await conn.execute(q)
            ]
