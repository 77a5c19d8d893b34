"""The facts garbage collection asks for and the deletions it makes, set-based: the mark is one
recursive query per batch of repositories, each sweep a conditional delete per chunk of rows
(a facet of the metadata store, mixed into it).

Every delete re-checks its condition inside its own transaction, so what changed since the mark
(a tag moved back, an index pushed, a link made again) survives. Results stream from the
database in chunks: the collector's memory is bounded by a chunk, not by a repository.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from dockyard.metadata import schema as s
from dockyard.metadata.faults import GuardedEngine
from dockyard.registry.digests import Digest
from dockyard.registry.ports import RepositoryView

if TYPE_CHECKING:
    from dockyard.metadata.outbox import Outbox
    from dockyard.metadata.pglocks import AdvisoryLocks

#: rows per chunk streamed from a mark, and per deleting transaction
CHUNK = 500

Pair = tuple[str, Digest]  # (repository, digest)


def _pairs(rows: Any) -> list[Pair]:
    return [(repository, Digest.trusted(digest)) for repository, digest, *_ in rows]


def _keys(pairs: Sequence[Pair]) -> list[tuple[str, str]]:
    return [(repository, str(digest)) for repository, digest in pairs]


def _doomed_manifests(
    first: str, last: str, cutoff: float, delete_untagged: bool, keep_referrers: bool
) -> Any:
    """Manifests of the repositories ``first``…``last`` that nothing keeps, older than ``cutoff``:
    kept are the tagged ones and everything they reach (children of an index, referrers of a
    subject), plus by policy untagged ones and referrers. Manifests no other manifest references
    come first, so an index goes in an earlier chunk than its children."""
    m, refs, t = s.manifests, s.manifest_refs, s.tags
    roots_if: list[Any] = [
        select(t.c.name).where(t.c.repository == m.c.repository, t.c.digest == m.c.digest).exists()
    ]
    if not delete_untagged:
        roots_if.append(m.c.subject.is_(None))
    if keep_referrers:
        roots_if.append(m.c.subject.is_not(None))
    kept = (
        select(m.c.repository, m.c.digest)
        .where(m.c.repository.between(first, last), or_(*roots_if))
        .cte("kept", recursive=True)
    )
    edges = union_all(
        select(refs.c.repository, refs.c.manifest.label("parent"), refs.c.digest.label("child")).where(
            refs.c.repository.between(first, last), refs.c.kind == "manifest"
        ),
        select(m.c.repository, m.c.subject.label("parent"), m.c.digest.label("child")).where(
            m.c.repository.between(first, last), m.c.subject.is_not(None)
        ),
    ).subquery("edges")
    # (A digest the walk reaches that is no manifest, say a child an index may lack, still
    # carries it on to its referrers: keeping more than needed, never less.)
    kept = kept.union(
        select(edges.c.repository, edges.c.child)
        .select_from(kept)
        .join(edges, (edges.c.repository == kept.c.repository) & (edges.c.parent == kept.c.digest))
    )
    referenced = (
        select(refs.c.digest)
        .where(refs.c.repository == m.c.repository, refs.c.digest == m.c.digest, refs.c.kind == "manifest")
        .exists()
    )
    return (
        select(m.c.repository, m.c.digest, referenced.label("referenced"))
        .where(
            m.c.repository.between(first, last),
            m.c.created_at < cutoff,
            # NOT EXISTS, not NOT IN: SQLite compares a row value against the list row by row
            ~select(kept.c.digest)
            .where(kept.c.repository == m.c.repository, kept.c.digest == m.c.digest)
            .exists(),
        )
        .order_by("referenced", m.c.repository, m.c.digest)
    )


def _unreferenced_links(first: str, last: str, cutoff: float) -> Any:
    """Links of the repositories ``first``…``last`` older than ``cutoff`` that no manifest of
    their repository references."""
    link, refs = s.repository_blobs, s.manifest_refs
    return (
        link.c.repository.between(first, last),
        link.c.created_at < cutoff,
        ~select(refs.c.digest)
        .where(refs.c.repository == link.c.repository, refs.c.digest == link.c.digest, refs.c.kind == "blob")
        .exists(),
    )


class GcQueries:
    """Garbage collection's queries; the store provides the engines, locks and outbox."""

    _read: GuardedEngine
    _is_sqlite: bool
    _lock_dir: Path | None
    _pg_locks: AdvisoryLocks | None
    outbox: Outbox | None
    _begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    _changed: Callable[[str | None], None]

    async def _stream(self, statement: Any) -> AsyncIterator[list[Any]]:
        async with self._read.connect() as conn:
            result = await conn.stream(statement)
            async for rows in result.partitions(CHUNK):
                yield list(rows)

    # -- the mark ------------------------------------------------------------------------------------

    async def gc_doomed_manifests(
        self, first: str, last: str, cutoff: float, delete_untagged: bool, keep_referrers: bool
    ) -> AsyncIterator[list[Pair]]:
        """Chunks of the manifests of repositories ``first``…``last`` (by name, inclusive) that
        nothing keeps and that are older than ``cutoff``; indexes before their children."""
        statement = _doomed_manifests(first, last, cutoff, delete_untagged, keep_referrers)
        async for rows in self._stream(statement):
            yield _pairs(rows)

    async def gc_unreferenced_links(self, first: str, last: str, cutoff: float) -> AsyncIterator[list[Pair]]:
        """Chunks of the links of repositories ``first``…``last`` older than ``cutoff`` that no
        manifest of their repository references."""
        link = s.repository_blobs
        statement = (
            select(link.c.repository, link.c.digest)
            .where(*_unreferenced_links(first, last, cutoff))
            .order_by(link.c.repository, link.c.digest)
        )
        async for rows in self._stream(statement):
            yield _pairs(rows)

    async def gc_unlinked_blobs(self, after: str | None, limit: int = CHUNK) -> list[tuple[Digest, int]]:
        """A page of blob records (by digest, after ``after``) that no repository links."""
        b, link = s.blobs, s.repository_blobs
        q = (
            select(b.c.digest, b.c.size)
            .where(~select(link.c.digest).where(link.c.digest == b.c.digest).exists())
            .order_by(b.c.digest)
            .limit(limit)
        )
        if after is not None:
            q = q.where(b.c.digest > after)
        async with self._read.connect() as conn:
            return [(Digest.trusted(d), size) for d, size in await conn.execute(q)]

    async def recorded_digests(self, after: Digest | None, limit: int = 1000) -> list[Digest]:
        """The next ``limit`` digests, in digest order after ``after``, that a blob record or a
        manifest in any repository records (a page: fsck walks the registry with these)."""
        b, m = s.blobs, s.manifests
        blobs = select(b.c.digest).order_by(b.c.digest).limit(limit)
        manifests = select(m.c.digest).distinct().order_by(m.c.digest).limit(limit)
        if after is not None:
            blobs = blobs.where(b.c.digest > str(after))
            manifests = manifests.where(m.c.digest > str(after))
        async with self._read.connect() as conn:
            found = set((await conn.execute(blobs)).scalars())
            found.update((await conn.execute(manifests)).scalars())
        # The first ``limit`` of the union are among the first ``limit`` of each.
        return sorted(Digest.trusted(d) for d in found)[:limit]

    async def repositories_with_manifest(self, digest: Digest, limit: int = 1000) -> list[str]:
        """Up to ``limit`` repositories that record the manifest ``digest``, by name."""
        m = s.manifests
        q = select(m.c.repository).where(m.c.digest == str(digest)).order_by(m.c.repository).limit(limit)
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def gc_recorded(self, digests: Sequence[Digest]) -> set[Digest]:
        """Those of ``digests`` that something records: a blob record, or a manifest anywhere."""
        wanted = {str(d) for d in digests}
        if not wanted:
            return set()
        b, m = s.blobs, s.manifests
        q = union_all(
            select(b.c.digest).where(b.c.digest.in_(wanted)),
            select(m.c.digest).where(m.c.digest.in_(wanted)),
        )
        async with self._read.connect() as conn:
            return {Digest.trusted(d) for d in (await conn.execute(q)).scalars()}

    async def has_manifest(self, digest: Digest) -> bool:
        async with self._read.connect() as conn:
            q = select(s.manifests.c.digest).where(s.manifests.c.digest == str(digest)).limit(1)
            return (await conn.execute(q)).first() is not None

    async def blob_recorded(self, digest: Digest) -> bool:
        async with self._read.connect() as conn:
            q = select(s.blobs.c.digest).where(s.blobs.c.digest == str(digest))
            return (await conn.execute(q)).first() is not None

    async def gc_repository_view(self, repository: str) -> RepositoryView:
        """One repository's manifests, tags and edges, for a dry run that imagines tags gone."""
        view = RepositoryView(created={}, subjects={}, children={}, tagged=set())
        async with self._read.connect() as conn:
            rows = await conn.execute(
                select(s.manifests.c.digest, s.manifests.c.subject, s.manifests.c.created_at).where(
                    s.manifests.c.repository == repository
                )
            )
            for digest, subject, created in rows:
                view.created[Digest.parse(digest)] = created
                if subject:
                    view.subjects[Digest.parse(digest)] = Digest.parse(subject)
            edges = await conn.execute(
                select(s.manifest_refs.c.manifest, s.manifest_refs.c.digest).where(
                    s.manifest_refs.c.repository == repository, s.manifest_refs.c.kind == "manifest"
                )
            )
            for parent, child in edges:
                view.children.setdefault(Digest.parse(parent), set()).add(Digest.parse(child))
            tagged = await conn.execute(select(s.tags.c.digest).where(s.tags.c.repository == repository))
            view.tagged = {Digest.parse(d) for d in tagged.scalars()}
        return view

    # -- the sweep -----------------------------------------------------------------------------------

    def _changed_all(self, pairs: Sequence[Pair]) -> None:
        for repository in sorted({r for r, _ in pairs}):
            self._changed(repository)

    async def gc_delete_manifests(self, doomed: Sequence[Pair], cutoff: float) -> list[Pair]:
        """Delete those of ``doomed`` that are still untagged, older than ``cutoff`` and
        referenced by no manifest outside ``doomed``; returns the ones deleted."""
        if not doomed:
            return []
        keys = _keys(doomed)
        m, refs, t = s.manifests, s.manifest_refs, s.tags
        try:
            async with self._begin() as conn:
                # Lock the rows first (PostgreSQL; SQLite's write transaction is already exclusive),
                # so a concurrent tag move or push serialises with the re-checks below.
                if not self._is_sqlite:
                    await conn.execute(
                        select(m.c.digest)
                        .where(tuple_(m.c.repository, m.c.digest).in_(keys))
                        .with_for_update()
                    )
                found = await conn.execute(
                    select(m.c.repository, m.c.digest).where(
                        tuple_(m.c.repository, m.c.digest).in_(keys),
                        m.c.created_at < cutoff,
                        ~select(t.c.name)
                        .where(t.c.repository == m.c.repository, t.c.digest == m.c.digest)
                        .exists(),
                        ~select(refs.c.manifest)
                        .where(
                            refs.c.repository == m.c.repository,
                            refs.c.digest == m.c.digest,
                            refs.c.kind == "manifest",
                            tuple_(refs.c.repository, refs.c.manifest).not_in(keys),
                        )
                        .exists(),
                    )
                )
                victims = sorted((r, d) for r, d in found)
                if not victims:
                    return []
                await conn.execute(delete(m).where(tuple_(m.c.repository, m.c.digest).in_(victims)))
                await conn.execute(
                    delete(refs).where(tuple_(refs.c.repository, refs.c.manifest).in_(victims))
                )
                if self.outbox is not None:
                    for repository, digest in victims:
                        await conn.run_sync(self.outbox.manifest_deleted, repository, digest, [], reason="gc")
                    self.outbox.written()
                return [(r, Digest.trusted(d)) for r, d in victims]
        finally:
            self._changed_all(doomed)

    async def gc_delete_links(self, links: Sequence[Pair], cutoff: float) -> list[Pair]:
        """Delete those of ``links`` still older than ``cutoff`` and still unreferenced."""
        if not links:
            return []
        link, refs = s.repository_blobs, s.manifest_refs
        try:
            async with self._begin() as conn:
                result = await conn.execute(
                    delete(link)
                    .where(
                        tuple_(link.c.repository, link.c.digest).in_(_keys(links)),
                        link.c.created_at < cutoff,
                        ~select(refs.c.digest)
                        .where(
                            refs.c.repository == link.c.repository,
                            refs.c.digest == link.c.digest,
                            refs.c.kind == "blob",
                        )
                        .exists(),
                    )
                    .returning(link.c.repository, link.c.digest)
                )
                return sorted(_pairs(result))
        finally:
            self._changed_all(links)

    async def gc_forget_blobs(self, digests: Sequence[Digest]) -> list[tuple[Digest, int]]:
        """Drop the records of those blobs that still nothing links and that are no manifest's
        digest; returns the ones dropped. The caller holds their locks (``lock_blobs``)."""
        if not digests:
            return []
        b, link, m = s.blobs, s.repository_blobs, s.manifests
        async with self._begin() as conn:
            result = await conn.execute(
                delete(b)
                .where(
                    b.c.digest.in_([str(d) for d in digests]),
                    ~select(link.c.digest).where(link.c.digest == b.c.digest).exists(),
                    ~select(m.c.digest).where(m.c.digest == b.c.digest).exists(),
                )
                .returning(b.c.digest, b.c.size)
            )
            return sorted((Digest.trusted(d), size) for d, size in result)
