"""Online garbage collection: mark and sweep while the registry serves pushes and pulls.

Per batch of repositories: retention rules drop tags; manifests that no tag keeps (directly, as
the child of a kept index, or as a referrer of a kept subject) are deleted when the policy says
so; links to blobs that no manifest of their repository references are removed. Then blobs no
repository links lose their record and their bytes, a page at a time. Nothing younger than the
grace period is touched, so a push that uploads its blobs now and its manifest later never loses
them. The mark is one recursive query per batch of repositories, streamed back in chunks; every
sweep is one conditional delete per chunk (metadata/gcqueries.py), so the collector's memory is
bounded by a chunk and its time grows with the rows, not with round trips per row.

Races with concurrent writes are closed where the writes happen: every deletion re-checks its
condition inside its own transaction; a manifest push re-checks (and touches) its links inside
its transaction; moving bytes into place, mounting and linking hold the blob's lock, and the
collector holds the locks of a whole page of blobs while it drops their records and deletes
their bytes. One collector runs at a time (a named lock in the metadata store: across workers
and nodes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dockyard.auth.access import matches
from dockyard.failpoints import database_fault_point, storage_fault_point
from dockyard.registry.digests import Digest
from dockyard.registry.ports import RepositoryView
from dockyard.registry.service import Registry

if TYPE_CHECKING:
    from dockyard.config import GcSettings, RetentionRule

log = logging.getLogger("dockyard.gc")

#: repositories marked together (one recursive query)
REPOSITORY_BATCH = 100
#: blobs whose records and bytes go together, under their locks (pushes wait that long at most)
BLOB_BATCH = 100
#: stored digests checked against the records in one query
STORED_BATCH = 1000
#: how many of each kind the report names (it counts them all)
REPORT_LIMIT = 10_000
#: byte deletions in flight (an object store's round trips overlap)
DELETE_CONCURRENCY = 16


@dataclass
class GcReport:
    dry_run: bool
    started_at: float = 0.0
    duration: float = 0.0
    tags: list[str] = field(default_factory=list)  # "repo:tag"
    manifests: list[str] = field(default_factory=list)  # "repo@digest"
    links: list[str] = field(default_factory=list)  # "repo@digest"
    blobs: list[str] = field(default_factory=list)  # digests whose bytes go
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("tags", "manifests", "links", "blobs"), 0)
    )
    bytes_freed: int = 0
    sessions_purged: int = 0
    skipped: str | None = None  # why nothing ran (another collector holds the lock)

    def add(self, kind: str, item: str) -> None:
        """Count one deletion of ``kind``; name it while fewer than ``REPORT_LIMIT`` are."""
        self.counts[kind] += 1
        named: list[str] = getattr(self, kind)
        if len(named) < REPORT_LIMIT:
            named.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "duration_seconds": round(self.duration, 3),
            "tags_deleted": self.counts["tags"],
            "manifests_deleted": self.counts["manifests"],
            "links_deleted": self.counts["links"],
            "blobs_deleted": self.counts["blobs"],
            "bytes_freed": self.bytes_freed,
            "sessions_purged": self.sessions_purged,
            "skipped": self.skipped,
            "listed_up_to": REPORT_LIMIT,
            "tags": self.tags,
            "manifests": self.manifests,
            "links": self.links,
            "blobs": self.blobs,
        }


def kept_manifests(view: RepositoryView, delete_untagged: bool, keep_referrers: bool) -> set[Digest]:
    """The manifests a repository keeps: tagged ones, everything they reach (children of an
    index, referrers of a subject), plus by policy untagged ones and orphaned referrers."""
    roots = set(view.tagged) & set(view.created)
    if not delete_untagged:
        roots |= {d for d in view.created if d not in view.subjects}
    if keep_referrers:
        roots |= set(view.subjects)
    referrers: dict[Digest, set[Digest]] = {}
    for referrer, subject in view.subjects.items():
        referrers.setdefault(subject, set()).add(referrer)
    kept: set[Digest] = set()
    stack = list(roots)
    while stack:
        digest = stack.pop()
        if digest in kept or digest not in view.created:
            continue
        kept.add(digest)
        stack.extend(view.children.get(digest, ()))
        stack.extend(referrers.get(digest, ()))
    return kept


def tags_to_drop(
    rules: list[RetentionRule], repository: str, tags: list[tuple[str, Digest, float]], now: float
) -> list[tuple[str, Digest]]:
    """Tags the retention rules drop: not protected by a pattern, not among the newest
    ``keep_last``, and (when ``max_age_days`` is set) older than that."""
    drop: dict[str, Digest] = {}
    for rule in rules:
        if not matches(rule.repository, repository):
            continue
        protected = [re.compile(p) for p in rule.keep_tags]
        candidates = sorted(
            (t for t in tags if not any(p.fullmatch(t[0]) for p in protected)), key=lambda t: (-t[2], t[0])
        )
        if rule.keep_last is not None:
            candidates = candidates[rule.keep_last :]
        elif rule.max_age_days is None:
            continue
        for name, digest, moved in candidates:
            if rule.max_age_days is None or moved < now - rule.max_age_days * 86400:
                drop[name] = digest
    return sorted(drop.items())


async def collect(core: Registry, settings: GcSettings, dry_run: bool = False) -> GcReport:
    """One collection. With ``dry_run`` it only reports what it would delete."""
    report = GcReport(dry_run=dry_run, started_at=core.now())
    async with core.meta.try_lock("gc") as locked:
        if not locked:
            report.skipped = "another collection is running"
            return report
        begun = time.monotonic()
        cutoff = core.now() - settings.grace_seconds
        last: str | None = None
        while True:
            names = await core.meta.list_repositories(REPOSITORY_BATCH, last)
            if names:
                await _collect_repositories(core, settings, names, cutoff, dry_run, report)
            if len(names) < REPOSITORY_BATCH:
                break
            last = names[-1]
        await _collect_blobs(core, dry_run, report)
        await _collect_unrecorded_bytes(core, cutoff, dry_run, report)
        if not dry_run:
            report.sessions_purged = await core.purge_stale_uploads()
        report.duration = time.monotonic() - begun
        await core.meta.record_gc_run(
            {
                "started_at": report.started_at,
                "duration": report.duration,
                "dry_run": dry_run,
                "manifests_deleted": report.counts["manifests"],
                "tags_deleted": report.counts["tags"],
                "links_deleted": report.counts["links"],
                "blobs_deleted": report.counts["blobs"],
                "bytes_freed": report.bytes_freed,
            }
        )
    log.info(
        "gc%s: %d tags, %d manifests, %d links, %d blobs (%d bytes) in %.2fs",
        " (dry run)" if dry_run else "",
        report.counts["tags"],
        report.counts["manifests"],
        report.counts["links"],
        report.counts["blobs"],
        report.bytes_freed,
        report.duration,
    )
    return report


async def _collect_repositories(
    core: Registry, settings: GcSettings, names: list[str], cutoff: float, dry_run: bool, report: GcReport
) -> None:
    """Retention, the mark and the sweep of manifests and links, for repositories ``names``."""
    meta = core.meta
    imagined: set[str] = set()  # dry run: repositories marked as if their dropped tags were gone
    doomed_in: set[str] = set()  # dry run: repositories with manifests to delete
    if settings.retention:
        for name in names:
            tags = await meta.list_tag_records(name)
            dropped = tags_to_drop(settings.retention, name, tags, core.now())
            for tag, digest in dropped:
                if dry_run or await meta.delete_tag_if(name, tag, digest):
                    report.add("tags", f"{name}:{tag}")
            if dry_run and dropped:
                imagined.add(name)
                view = await meta.gc_repository_view(name)
                gone = {tag for tag, _ in dropped}
                view.tagged = {digest for tag, digest, _ in tags if tag not in gone}
                kept = kept_manifests(view, settings.delete_untagged, settings.referrers == "keep")
                for digest in sorted(d for d in view.created if d not in kept and view.created[d] < cutoff):
                    report.add("manifests", f"{name}@{digest}")
                    doomed_in.add(name)
    first, last = names[0], names[-1]
    doomed = meta.gc_doomed_manifests(
        first, last, cutoff, settings.delete_untagged, settings.referrers == "keep"
    )
    async for chunk in doomed:
        chunk = [(r, d) for r, d in chunk if r not in imagined]
        deleted = chunk if dry_run else await meta.gc_delete_manifests(chunk, cutoff)
        for repository, digest in deleted:
            report.add("manifests", f"{repository}@{digest}")
            doomed_in.add(repository)
    async for links in meta.gc_unreferenced_links(first, last, cutoff):
        if dry_run:  # the links doomed manifests hold would go only once they are gone
            removed = [(r, d) for r, d in links if r not in doomed_in]
        else:
            removed = await meta.gc_delete_links(links, cutoff)
        for repository, digest in removed:
            report.add("links", f"{repository}@{digest}")


async def _delete_bytes(core: Registry, digests: list[Digest]) -> None:
    for start in range(0, len(digests), DELETE_CONCURRENCY):
        await asyncio.gather(*(core.blobs.delete(d) for d in digests[start : start + DELETE_CONCURRENCY]))


async def _collect_blobs(core: Registry, dry_run: bool, report: GcReport) -> None:
    """Blobs no repository links lose their record and bytes, a page at a time, under the
    page's blob locks (so no commit or mount can move the bytes in and link them meanwhile)."""
    after: str | None = None
    while True:
        page = await core.meta.gc_unlinked_blobs(after, BLOB_BATCH)
        if not page:
            return
        after = str(page[-1][0])
        if dry_run:
            gone = page
        else:
            digests = [d for d, _ in page]
            async with core.meta.lock_blobs(digests):
                database_fault_point("gc.forget")
                gone = await core.meta.gc_forget_blobs(digests)
                if gone:
                    # The records go first: bytes left behind by a failing delete are collected
                    # by a later run (below), never bytes that something still records.
                    storage_fault_point("gc.delete")
                    await _delete_bytes(core, [d for d, _ in gone])
        for digest, size in gone:
            report.add("blobs", str(digest))
            report.bytes_freed += size
        if len(page) < BLOB_BATCH:
            return


async def _collect_unrecorded_bytes(core: Registry, cutoff: float, dry_run: bool, report: GcReport) -> None:
    """Bytes nothing records (a manifest deleted everywhere, a crash between a move and its
    link) go once past the grace period. Checked against the records a batch at a time."""
    batch: list[Digest] = []
    async for digest in core.blobs.iter_digests():
        batch.append(digest)
        if len(batch) >= STORED_BATCH:
            await _collect_unrecorded(core, batch, cutoff, dry_run, report)
            batch = []
    if batch:
        await _collect_unrecorded(core, batch, cutoff, dry_run, report)


async def _collect_unrecorded(
    core: Registry, digests: list[Digest], cutoff: float, dry_run: bool, report: GcReport
) -> None:
    recorded = await core.meta.gc_recorded(digests)
    candidates: list[Digest] = []
    for digest in digests:
        if digest in recorded:
            continue
        age = await core.blobs.age(digest)
        if age is None or time.time() - age > cutoff:  # stored after the cutoff: too young
            continue
        candidates.append(digest)
    for start in range(0, len(candidates), BLOB_BATCH):
        page = candidates[start : start + BLOB_BATCH]
        if dry_run:
            await _report_unrecorded(core, page, set(), report)
            continue
        async with core.meta.lock_blobs(page):
            # Under the locks: a commit, mount or manifest push may have recorded some meanwhile.
            found = await _report_unrecorded(core, page, await core.meta.gc_recorded(page), report)
            await _delete_bytes(core, found)


async def _report_unrecorded(
    core: Registry, digests: list[Digest], recorded: set[Digest], report: GcReport
) -> list[Digest]:
    found = [d for d in digests if d not in recorded]
    for digest in found:
        report.add("blobs", str(digest))
        report.bytes_freed += await core.blobs.stat(digest) or 0
    return found
