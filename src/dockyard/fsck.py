"""``dockyard fsck``: check that what the metadata says matches the bytes, and report orphans.

A clean report means: every stored blob hashes to its digest, every blob and manifest the
metadata records has its bytes, no tag points at a manifest that is not recorded, and no link
points at an unrecorded blob. Orphans (bytes nothing records, staging areas with no session,
sessions whose staged bytes are gone) are garbage, not damage: reported, and removed by
``--repair`` once older than the grace period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dockyard.registry.digests import Digest, new_hasher
from dockyard.registry.ports import TagRecord, UploadSession
from dockyard.registry.service import Registry


@dataclass
class FsckReport:
    blobs_checked: int = 0
    bytes_checked: int = 0
    corrupt: list[Digest] = field(default_factory=list)
    missing_bytes: list[Digest] = field(default_factory=list)
    dangling_tags: list[TagRecord] = field(default_factory=list)
    unrecorded_links: list[tuple[str, Digest]] = field(default_factory=list)
    orphan_bytes: list[Digest] = field(default_factory=list)
    orphan_staging: list[str] = field(default_factory=list)
    sessions_without_bytes: list[str] = field(default_factory=list)
    unparseable: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No damage: nothing corrupt, missing or dangling (orphans are only garbage)."""
        return not (
            self.corrupt
            or self.missing_bytes
            or self.dangling_tags
            or self.unrecorded_links
            or self.unparseable
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "blobs_checked": self.blobs_checked,
            "bytes_checked": self.bytes_checked,
            "corrupt": [str(d) for d in self.corrupt],
            "missing_bytes": [str(d) for d in self.missing_bytes],
            "dangling_tags": [f"{t.repository}:{t.tag} -> {t.digest}" for t in self.dangling_tags],
            "unrecorded_links": [f"{r} -> {d}" for r, d in self.unrecorded_links],
            "orphan_bytes": [str(d) for d in self.orphan_bytes],
            "orphan_staging": self.orphan_staging,
            "sessions_without_bytes": self.sessions_without_bytes,
            "unparseable": self.unparseable,
            "repaired": self.repaired,
        }


async def _hash_matches(core: Registry, digest: Digest) -> tuple[bool, int]:
    hasher = new_hasher(digest.algorithm)
    size = 0
    async for data in core.blobs.read(digest):
        hasher.update(data)
        size += len(data)
    return hasher.hexdigest() == digest.hex, size


#: digests per page of records read from the metadata store
PAGE = 1000


async def _recorded(core: Registry) -> AsyncIterator[Digest]:
    """Every digest something records, in digest order, a page at a time."""
    after: Digest | None = None
    while True:
        page = await core.meta.recorded_digests(after, PAGE)
        for digest in page:
            if after is not None and digest <= after:
                raise RuntimeError(f"the metadata store listed {digest} after {after}: not in digest order")
            yield digest
            after = digest
        if len(page) < PAGE:
            return


async def fsck(core: Registry, repair: bool = False, grace_seconds: float = 3600.0) -> FsckReport:
    """Check the stores under ``core``; with ``repair``, remove damage and old orphans.

    The stored digests and the recorded ones are walked side by side, both in digest order (a
    merge), so memory holds a page of records, not the registry: what one side has and the other
    lacks is an orphan or a blob without bytes."""
    report = FsckReport()
    records = _recorded(core)
    record = await anext(records, None)
    last: Digest | None = None
    async for entry in core.blobs.iter_digests():
        try:
            digest = Digest.parse(str(entry))
        except Exception:
            report.unparseable.append(str(entry))
            continue
        if last is not None and digest <= last:
            report.unparseable.append(f"{digest} (stored out of place)")
            continue
        last = digest
        while record is not None and record < digest:
            report.missing_bytes.append(record)
            record = await anext(records, None)
        recorded = record == digest
        if recorded:
            record = await anext(records, None)
        ok, size = await _hash_matches(core, digest)
        report.blobs_checked += 1
        report.bytes_checked += size
        if not ok:
            report.corrupt.append(digest)
        elif not recorded:
            report.orphan_bytes.append(digest)
    while record is not None:
        report.missing_bytes.append(record)
        record = await anext(records, None)
    report.dangling_tags = await core.meta.dangling_tags()
    report.unrecorded_links = await core.meta.unrecorded_links()

    sessions = await core.meta.upload_ids()
    staging = set(await core.blobs.staging_ids())
    report.orphan_staging = sorted(staging - sessions)
    for upload_id in sorted(sessions):
        session = await core.meta.get_upload(upload_id)
        if session is not None and session.offset > 0 and await core.blobs.staging_size(session) is None:
            report.sessions_without_bytes.append(upload_id)

    if repair:
        await _repair(core, report, grace_seconds)
    return report


async def _repair(core: Registry, report: FsckReport, grace_seconds: float) -> None:
    for digest in report.corrupt:
        # Bad bytes must not be served: drop them and their records; clients push them again.
        await _forget(core, digest, report)
        await core.blobs.delete(digest)
        report.repaired.append(f"removed corrupt {digest}")
    for tag in report.dangling_tags:
        await core.meta.delete_tag(tag.repository, tag.tag)
        report.repaired.append(f"removed dangling tag {tag.repository}:{tag.tag}")
    for _repository, digest in report.unrecorded_links:
        await core.meta.forget_blob(digest)
        report.repaired.append(f"removed link to unrecorded {digest}")
    for digest in report.missing_bytes:
        if digest not in report.corrupt:
            await _forget(core, digest, report)
            report.repaired.append(f"forgot blob without bytes {digest}")
    for digest in report.orphan_bytes:
        age = await core.blobs.age(digest)
        if age is not None and age >= grace_seconds:
            await core.blobs.delete(digest)
            report.repaired.append(f"removed orphan bytes {digest}")
    for upload_id in report.orphan_staging + report.sessions_without_bytes:
        session = await core.meta.get_upload(upload_id) or UploadSession(id=upload_id, repository="")
        async with core.meta.lock_upload(upload_id) as locked:
            if locked:
                await core.blobs.staging_delete(session)
                await core.meta.delete_upload(upload_id)
                report.repaired.append(f"removed upload session {upload_id}")


async def _forget(core: Registry, digest: Digest, report: FsckReport) -> None:
    """Drop every record of ``digest``: as a blob, and as a manifest in each repository (with
    the tags that point at it there)."""
    await core.meta.forget_blob(digest)
    while repositories := await core.meta.repositories_with_manifest(digest):
        removed = 0
        for repository in repositories:
            if await core.meta.delete_manifest(repository, digest):
                removed += 1
                report.repaired.append(f"removed manifest {repository}@{digest} (its bytes are gone)")
        if not removed:  # someone else removed them meanwhile: the next look finds none
            break
