"""Online garbage collection: mark and sweep while the registry serves pushes and pulls.

Per repository: retention rules drop tags; manifests that no tag keeps (directly, as the child of
a kept index, or as a referrer of a kept subject) are deleted when the policy says so; links to
blobs that no manifest of the repository references are removed. Then blobs no repository links
lose their record and their bytes. Nothing younger than the grace period is touched, so a push
that uploads its blobs now and its manifest later never loses them.

Races with concurrent writes are closed where the writes happen: every deletion re-checks its
condition inside its own transaction; a manifest push re-checks (and touches) its links inside
its transaction; moving bytes into place, mounting and linking hold the blob's lock, which the
collector takes before deleting a blob's bytes. One collector runs at a time (a named lock in the
metadata store: across workers and nodes).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dockyard.auth.access import matches
from dockyard.config import GcSettings, RetentionRule
from dockyard.failpoints import database_fault_point, storage_fault_point
from dockyard.registry.digests import Digest
from dockyard.registry.ports import RepositoryView
from dockyard.registry.service import Registry

log = logging.getLogger("dockyard.gc")


@dataclass
class GcReport:
    dry_run: bool
    started_at: float = 0.0
    duration: float = 0.0
    tags: list[str] = field(default_factory=list)  # "repo:tag"
    manifests: list[str] = field(default_factory=list)  # "repo@digest"
    links: list[str] = field(default_factory=list)  # "repo@digest"
    blobs: list[str] = field(default_factory=list)  # digests whose bytes go
    bytes_freed: int = 0
    sessions_purged: int = 0
    skipped: str | None = None  # why nothing ran (another collector holds the lock)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "duration_seconds": round(self.duration, 3),
            "tags_deleted": len(self.tags),
            "manifests_deleted": len(self.manifests),
            "links_deleted": len(self.links),
            "blobs_deleted": len(self.blobs),
            "bytes_freed": self.bytes_freed,
            "sessions_purged": self.sessions_purged,
            "skipped": self.skipped,
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
            names = await core.meta.list_repositories(500, last)
            for name in names:
                await _collect_repository(core, settings, name, cutoff, dry_run, report)
            if len(names) < 500:
                break
            last = names[-1]
        await _collect_blobs(core, cutoff, dry_run, report)
        if not dry_run:
            report.sessions_purged = await core.purge_stale_uploads()
        report.duration = time.monotonic() - begun
        await core.meta.record_gc_run(
            {
                "started_at": report.started_at,
                "duration": report.duration,
                "dry_run": dry_run,
                "manifests_deleted": len(report.manifests),
                "tags_deleted": len(report.tags),
                "links_deleted": len(report.links),
                "blobs_deleted": len(report.blobs),
                "bytes_freed": report.bytes_freed,
            }
        )
    log.info(
        "gc%s: %d tags, %d manifests, %d links, %d blobs (%d bytes) in %.2fs",
        " (dry run)" if dry_run else "",
        len(report.tags),
        len(report.manifests),
        len(report.links),
        len(report.blobs),
        report.bytes_freed,
        report.duration,
    )
    return report


async def _collect_repository(
    core: Registry, settings: GcSettings, name: str, cutoff: float, dry_run: bool, report: GcReport
) -> None:
    meta = core.meta
    tags = await meta.list_tag_records(name) if settings.retention else []
    dropped = tags_to_drop(settings.retention, name, tags, core.now())
    for tag, digest in dropped:
        if dry_run or await meta.delete_tag_if(name, tag, digest):
            report.tags.append(f"{name}:{tag}")
    view = await meta.gc_repository_view(name)
    if dry_run and dropped:  # as if the dropped tags were gone
        gone = {tag for tag, _ in dropped}
        view.tagged = {digest for tag, digest, _ in tags if tag not in gone}
    kept = kept_manifests(view, settings.delete_untagged, settings.referrers == "keep")
    doomed = sorted(d for d in view.created if d not in kept and view.created[d] < cutoff)
    deleted = doomed if dry_run else await meta.gc_delete_manifests(name, doomed, cutoff)
    report.manifests += [f"{name}@{d}" for d in deleted]
    if dry_run and deleted:
        return  # the links those manifests hold would go only once they are gone
    links = await meta.gc_unreferenced_links(name, cutoff, delete_them=not dry_run)
    report.links += [f"{name}@{d}" for d in links]


async def _collect_blobs(core: Registry, cutoff: float, dry_run: bool, report: GcReport) -> None:
    """Blobs no repository links lose their record and bytes; bytes nothing records (a manifest
    deleted everywhere, a crash between a move and its link) go once past the grace period."""
    unlinked = await core.meta.gc_unlinked_blobs()
    for digest, size in unlinked:
        if dry_run:
            report.blobs.append(str(digest))
            report.bytes_freed += size
            continue
        async with core.meta.lock_blob(digest):
            database_fault_point("gc.forget")
            if await core.meta.gc_forget_blob(digest):
                # The record goes first: bytes left behind by a failing delete are collected
                # by a later run (below), never bytes that something still records.
                storage_fault_point("gc.delete")
                await core.blobs.delete(digest)
                report.blobs.append(str(digest))
                report.bytes_freed += size
    handled = {d for d, _ in unlinked}
    async for digest in core.blobs.iter_digests():
        if digest in handled:
            continue
        age = await core.blobs.age(digest)
        if age is None or time.time() - age > cutoff:  # stored after the cutoff: too young
            continue
        async with core.meta.lock_blob(digest):
            if await core.meta.has_manifest(digest) or await core.meta.blob_recorded(digest):
                continue
            size = await core.blobs.stat(digest) or 0
            if not dry_run:
                await core.blobs.delete(digest)
            report.blobs.append(str(digest))
            report.bytes_freed += size
