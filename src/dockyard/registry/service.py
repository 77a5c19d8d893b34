"""The registry core: the spec's rules over the two ports, and nothing about HTTP."""

from __future__ import annotations

import contextlib
import errno
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dockyard.clock import wall_clock
from dockyard.failpoints import crash_point, database_fault_point, storage_fault_point
from dockyard.registry import errors
from dockyard.registry.digests import DEFAULT_ALGORITHM, Digest, Hasher, check_algorithm, new_hasher
from dockyard.registry.direct import DIRECT_MIX, DirectStatus, check_parts, parse_part_request
from dockyard.registry.hashing import BackgroundHasher
from dockyard.registry.manifests import ParsedManifest, parse_manifest
from dockyard.registry.names import Reference, parse_name, parse_tag
from dockyard.registry.ports import (
    BlobStore,
    DirectUploads,
    ManifestRecord,
    ManifestRef,
    MetadataStore,
    PartUrl,
    StoredPart,
    UploadSession,
)
from dockyard.registry.uploads import ChunkRange, LiveHashers, SessionError, UploadOutOfOrder

Body = AsyncIterator[bytes]


async def _no_body() -> Body:
    return
    yield  # an async generator that yields nothing


_UPLOAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PAGE_SIZE = re.compile(r"[0-9]{1,18}")
_CRASH_AFTER_BYTES = 1 << 20  # where the "patch.mid_body" crash point fires
#: a single POST of at most this many bytes (Content-Length) is taken whole, without a session
SMALL_BLOB_BYTES = 64 * 1024


@dataclass(frozen=True)
class Policy:
    """The rules an operator can change (all have the spec's or the field's defaults)."""

    delete_enabled: bool = True
    manifest_max_bytes: int = 4 * 1024 * 1024
    index_requires_children: bool = True
    upload_ttl_seconds: float = 24 * 3600.0
    max_uploads_per_repository: int = 1000
    max_page_size: int = 10_000
    max_tags_per_push: int = 100
    manifest_cache_bytes: int = 64 * 1024 * 1024
    link_refresh_seconds: float = 1800.0  # half of GC's default grace period
    takeover_after_seconds: float = 5.0  # a stalled body yields its session to a newer request
    pull_events: bool = False  # report manifest GETs as events (a write per pull)


class IncomingBlob(Protocol):
    """A blob on its way from an upstream registry into the store (pull-through cache)."""

    def stream(self) -> Body:
        """Its bytes as they arrive. The last piece comes only once all of them verified against
        the digest; if they do not, this raises instead."""
        ...

    async def stored(self) -> None:
        """Wait until the blob is stored here (and stop being streamed); raises if it was not."""
        ...

    def release(self) -> None:
        """The caller will not stream it (the download goes on for the cache)."""
        ...


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    path: Path | None
    redirect: str | None
    incoming: IncomingBlob | None = None  # not stored yet: arriving from an upstream


@dataclass(frozen=True)
class PushedManifest:
    digest: Digest
    tags: list[str]
    subject: Digest | None


@dataclass
class _ManifestCache:
    """Manifest bytes by digest: immutable, so safe to share across requests and workers' lives."""

    capacity: int
    used: int = 0
    entries: OrderedDict[Digest, bytes] = field(default_factory=OrderedDict)

    def get(self, digest: Digest) -> bytes | None:
        data = self.entries.get(digest)
        if data is not None:
            self.entries.move_to_end(digest)
        return data

    def put(self, digest: Digest, data: bytes) -> None:
        if len(data) > self.capacity or digest in self.entries:
            return
        self.entries[digest] = data
        self.used += len(data)
        while self.used > self.capacity:
            _, old = self.entries.popitem(last=False)
            self.used -= len(old)


def _check_upload_id(upload_id: str) -> None:
    """Upload ids name files and lock files: only our own UUIDs get that far."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise errors.RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:64]})


# A disk (or network filesystem) failing under us: the request may work later, on a mended
# disk or after a failover. Not the client's mistake, not our bug: 503 with Retry-After.
_FAILING_DISK = {errno.EIO, errno.EROFS, errno.ESTALE, errno.ETIMEDOUT}


def _storage_error(exc: OSError) -> BaseException:
    """What a storage ``OSError`` means to the client: a full disk is its 507; a failing one a
    503; anything else stays what it is (a bug, or an adapter's own error)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.RegistryError(errors.INSUFFICIENT_STORAGE)
    if exc.errno in _FAILING_DISK:  # (a client hanging up mid-body has no errno: it passes)
        return errors.DependencyUnavailable("storage", str(exc))
    return exc


@contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        error = _storage_error(exc)
        if error is exc:
            raise
        raise error from exc


class Registry:
    """What a registry does, in the spec's words; the HTTP layer turns requests into these calls."""

    def __init__(
        self,
        blobs: BlobStore,
        meta: MetadataStore,
        policy: Policy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.blobs = blobs
        self.meta = meta
        self.policy = policy or Policy()
        self._clock = clock or wall_clock()
        self._hashers = LiveHashers()
        self._manifests = _ManifestCache(self.policy.manifest_cache_bytes)

    def now(self) -> float:
        """The wall clock that ages, TTLs and expiry are measured with (see ``dockyard.clock``)."""
        return self._clock()

    # -- blobs ---------------------------------------------------------------------------------

    async def blob_info(
        self, repository: str, digest: Digest, want_redirect: bool = False, want_bytes: bool = False
    ) -> BlobInfo:
        """Where a blob's bytes are. ``want_bytes``: the caller will read them (a GET, where a
        HEAD only needs the size)."""
        found = await self.meta.linked_blob(repository, digest)
        if found is None:
            raise errors.RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})
        size, linked_at = found
        if linked_at < self._clock() - self.policy.link_refresh_seconds:
            # A client that finds a blob here (HEAD) may push a manifest for it next: tell garbage
            # collection the link is in use. A write at most once per refresh interval per link.
            await self.meta.touch_link(repository, digest)
        return BlobInfo(
            digest=digest,
            size=size,
            path=self.blobs.local_path(digest),
            redirect=await self.blobs.redirect_url(digest) if want_redirect else None,
        )

    async def read_blob(self, digest: Digest, offset: int, length: int) -> Body:
        with _storage_errors():  # a failing disk: 503 before the response starts, a cut after
            async for data in self.blobs.read(digest, offset, length):
                yield data

    async def delete_blob(self, repository: str, digest: Digest) -> None:
        self._check_delete_enabled()
        crash_point("delete.before")
        database_fault_point("delete.record")
        unlinked = await self.meta.unlink_blob(repository, digest)
        crash_point("delete.after")
        if not unlinked:
            raise errors.RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})

    # -- manifests -----------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: Reference) -> tuple[ManifestRecord, bytes]:
        record = await self.manifest_record(repository, reference)
        data = self._manifests.get(record.digest)
        if data is None:
            with _storage_errors():
                data = await self.blobs.read_all(record.digest)
            self._manifests.put(record.digest, data)
        if self.policy.pull_events:
            await self.meta.record_pull(repository, record, str(reference))
        return record, data

    async def manifest_record(self, repository: str, reference: Reference) -> ManifestRecord:
        if reference.digest is not None:
            record = await self.meta.get_manifest(repository, reference.digest)
        else:
            assert reference.tag is not None
            record = await self.meta.resolve_tag(repository, reference.tag)
        if record is None:
            raise errors.RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": str(reference)})
        return record

    async def put_manifest(
        self,
        repository: str,
        reference: Reference,
        body: bytes,
        content_type: str | None,
        extra_tags: Sequence[str] = (),
    ) -> PushedManifest:
        """Validate and store a manifest (spec: "Pushing Manifests"), tags included."""
        if len(body) > self.policy.manifest_max_bytes:
            raise errors.RegistryError(
                errors.MANIFEST_TOO_LARGE,
                detail={"limit": self.policy.manifest_max_bytes},
            )
        if reference.digest is not None:
            digest = Digest.of(body, reference.digest.algorithm)
            if digest != reference.digest:
                raise errors.RegistryError(
                    errors.DIGEST_INVALID,
                    message=f"manifest digest is {digest}, not {reference.digest}",
                )
        else:
            digest = Digest.of(body)
        tags = self._push_tags(reference, extra_tags)
        parsed = parse_manifest(body, content_type)
        await self._check_references(repository, parsed)
        await self._save_manifest(
            repository, digest, body, parsed, parsed.refs(self.policy.index_requires_children), tags
        )
        return PushedManifest(digest, tags, parsed.subject.digest if parsed.subject else None)

    async def _save_manifest(
        self,
        repository: str,
        digest: Digest,
        body: bytes,
        parsed: ParsedManifest,
        refs: Sequence[ManifestRef],
        tags: Sequence[str],
    ) -> None:
        """Store verified, validated manifest bytes and record them (and ``tags``) in the repository."""
        async with self.meta.lock_blob(digest):
            with _storage_errors():
                storage_fault_point("manifest.put")
                await self.blobs.put(digest, body)
            crash_point("manifest.before_record")
            database_fault_point("manifest.record")
            await self.meta.put_manifest(repository, parsed.record(digest, len(body)), refs, tags)
        crash_point("manifest.after_record")
        self._manifests.put(digest, body)

    def _push_tags(self, reference: Reference, extra_tags: Sequence[str]) -> list[str]:
        if reference.tag is not None:
            if extra_tags:
                raise errors.RegistryError(
                    errors.MANIFEST_INVALID, message="tag parameters need a manifest pushed by digest"
                )
            return [reference.tag]
        if len(extra_tags) > self.policy.max_tags_per_push:
            raise errors.RegistryError(
                errors.ErrorCode("MANIFEST_INVALID", 414, "too many tag parameters"),
                detail={"limit": self.policy.max_tags_per_push},
            )
        return list(dict.fromkeys(parse_tag(t) for t in extra_tags))

    async def _check_references(self, repository: str, parsed: ParsedManifest) -> None:
        # spec: "A registry MAY reject a manifest ... with descriptors ... that do not exist";
        # subject is exempt ("MUST initially accept ... a subject ... that does not exist").
        needed = [d for d in parsed.blobs if not d.non_distributable]
        missing = await self.meta.missing_blobs(repository, [d.digest for d in needed])
        if self.policy.index_requires_children and parsed.children:
            missing += await self.meta.missing_manifests(repository, [d.digest for d in parsed.children])
        if missing:
            raise errors.RegistryError(
                errors.MANIFEST_BLOB_UNKNOWN,
                detail={"missing": [str(d) for d in dict.fromkeys(missing)]},
                message=f"manifest references {len(missing)} unknown blob(s) or manifest(s)",
            )
        for d in needed:
            size = await self.meta.linked_blob_size(repository, d.digest)
            if size is not None and size != d.size:
                raise errors.RegistryError(
                    errors.MANIFEST_INVALID,
                    message=f"descriptor {d.digest} says size {d.size}, the blob has {size}",
                )

    async def delete_manifest(self, repository: str, reference: Reference) -> None:
        self._check_delete_enabled()
        if not await self.meta.repository_exists(repository):
            raise errors.RegistryError(errors.NAME_UNKNOWN, detail={"name": repository})
        crash_point("delete.before")
        database_fault_point("delete.record")
        if reference.tag is not None:
            deleted = await self.meta.delete_tag(repository, reference.tag)
        else:
            assert reference.digest is not None
            deleted = await self.meta.delete_manifest(repository, reference.digest)
        crash_point("delete.after")
        if not deleted:
            raise errors.RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": str(reference)})

    async def delete_repository(self, repository: str) -> None:
        """Remove a repository: tags, manifests, links, sessions. The bytes go at the next GC."""
        self._check_delete_enabled()
        for session_id in await self.meta.upload_ids_of(repository):
            session = await self.meta.get_upload(session_id)
            if session is not None:
                self._hashers.drop(session.id)
                await self.blobs.staging_delete(session)
        if not await self.meta.delete_repository(repository):
            raise errors.RegistryError(errors.NAME_UNKNOWN, detail={"name": repository})

    def _check_delete_enabled(self) -> None:
        if not self.policy.delete_enabled:
            raise errors.RegistryError(errors.UNSUPPORTED, message="deletes are disabled on this registry")

    # -- discovery -----------------------------------------------------------------------------

    def page_size(self, n: str | None) -> int:
        """The page size a client asked for (``n``), capped; pagination goes on by ``Link``."""
        if n is None or n == "":
            return self.policy.max_page_size
        if not _PAGE_SIZE.fullmatch(n):
            raise errors.RegistryError(errors.PAGINATION_INVALID, detail={"n": n[:40]})
        return min(int(n), self.policy.max_page_size)

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool]:
        """A page of tags in byte order after ``last``, and whether more follow."""
        if not await self.meta.repository_exists(repository):
            raise errors.RegistryError(errors.NAME_UNKNOWN, detail={"name": repository})
        if limit == 0:  # spec: "When n is zero, ... an empty list, and MUST NOT include a Link"
            return [], False
        page = await self.meta.list_tags(repository, limit + 1, last)
        return page[:limit], len(page) > limit

    async def list_repositories(
        self, limit: int, last: str | None, may_read: Callable[[str], bool] | None = None
    ) -> tuple[list[str], bool]:
        """A page of repository names after ``last``: only those ``may_read`` admits."""
        if limit == 0:
            return [], False
        found: list[str] = []
        while True:
            page = await self.meta.list_repositories(max(limit + 1, 100), last)
            found += [name for name in page if may_read is None or may_read(name)]
            if len(found) > limit or len(page) < max(limit + 1, 100):
                return found[:limit], len(found) > limit
            last = page[-1]

    async def list_referrers(
        self, repository: str, subject: Digest, artifact_type: str | None
    ) -> list[ManifestRecord]:
        return await self.meta.list_referrers(repository, subject, artifact_type)

    async def tags_of_manifest(self, repository: str, digest: Digest, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` tags pointing at the manifest, in byte order, and whether more do."""
        found = await self.meta.tags_of_manifest(repository, digest, limit + 1)
        return found[:limit], len(found) > limit

    # -- uploads -------------------------------------------------------------------------------

    async def begin_upload(
        self,
        repository: str,
        *,
        mount: str | None = None,
        source: str | None = None,
        digest: str | None = None,
        algorithm: str | None = None,
        length: int | None = None,
        body: Body | None = None,
        owner: str | None = None,
        may_read: Callable[[str], bool] | None = None,
        may_mount_from: Callable[[str], bool] | None = None,
        direct: Sequence[str] = (),
    ) -> Digest | UploadSession:
        """The POST that starts every push: a mount (``mount``, ``source``), the whole blob in
        one request (``digest`` with ``body``), or a new session. A finished blob comes back as
        its digest, a session as itself.

        ``may_read`` says which repositories the client may pull (None: all), for a mount
        without a source; ``may_mount_from`` whether this request may read the named source
        (a token's scopes). A source it may not read is treated as one that lacks the blob.
        ``direct``: the direct-upload kinds the client speaks; a new session is direct when the
        store offers one of them (docs/direct-uploads.md).
        """
        if mount is not None:
            blob = Digest.parse(mount)
            origin = parse_name(source) if source else None
            if (origin is None or may_mount_from is None or may_mount_from(origin)) and await self.mount_blob(
                repository, blob, origin, may_read
            ) is not None:
                return blob
            # spec: a registry "unable to mount the requested blob ... SHOULD return a 202"
        elif digest is not None:
            return await self.upload_whole(repository, digest, length, body or _no_body(), owner)
        if body is not None:
            raise errors.RegistryError(
                errors.BLOB_UPLOAD_INVALID, message="a POST without ?digest= takes no body"
            )
        return await self.start_upload(repository, algorithm, owner, direct)

    async def start_upload(
        self,
        repository: str,
        algorithm: str | None = None,
        owner: str | None = None,
        direct: Sequence[str] = (),
    ) -> UploadSession:
        """Open an upload session (spec: "POST then PUT", "Pushing a blob in chunks")."""
        algorithm = check_algorithm(algorithm or DEFAULT_ALGORITHM)
        if await self.meta.count_uploads(repository) >= self.policy.max_uploads_per_repository:
            raise errors.RegistryError(
                errors.UPLOAD_LIMIT,
                headers={"Retry-After": "60"},
                detail={"limit": self.policy.max_uploads_per_repository},
            )
        now = self._clock()
        session = UploadSession(
            id=str(uuid.uuid4()),
            repository=repository,
            algorithm=algorithm,
            created_at=now,
            updated_at=now,
            owner=owner,
        )
        database_fault_point("upload.create")
        offered = self.blobs.direct
        if offered is not None and offered.kind in direct:
            with _storage_errors():
                await offered.open(session)
        await self.meta.create_upload(session)
        return session

    async def mount_blob(
        self,
        repository: str,
        digest: Digest,
        source: str | None,
        may_read: Callable[[str], bool] | None = None,
    ) -> int | None:
        """Link a blob another repository has (spec: "Mounting a blob"); None if it cannot be.

        Without ``source``, any repository holding the blob that ``may_read`` admits will do.
        """
        origin = source  # where the blob is mounted from (unknown when any repository would do)
        if source is not None:
            size = await self.meta.linked_blob_size(source, digest)
        elif may_read is None:
            size = await self.meta.blob_size(digest)
        else:
            holders = await self.meta.repositories_with_blob(digest, 1000)
            origin = next((r for r in holders if may_read(r)), None)
            size = await self.meta.linked_blob_size(origin, digest) if origin else None
        if size is None:
            return None
        async with self.meta.lock_blob(digest):
            if await self.blobs.stat(digest) is None:
                return None
            database_fault_point("mount.link")
            await self.meta.link_blob(repository, digest, size, mounted_from=origin, mounted=True)
        return size

    async def upload_status(self, repository: str, upload_id: str, owner: str | None = None) -> UploadSession:
        return await self._session(repository, upload_id, owner)

    async def append_chunk(
        self,
        repository: str,
        upload_id: str,
        chunk: str | None,
        length: int | None,
        body: Body,
        owner: str | None = None,
    ) -> UploadSession:
        """Append a chunk (PATCH); a chunk must start where the session ends."""
        async with self._writer(repository, upload_id, owner) as session:
            self._refuse_direct(session)
            await self._append(session, chunk, length, body)
        return session

    async def commit_upload(
        self,
        repository: str,
        upload_id: str,
        digest_text: str | None,
        chunk: str | None,
        length: int | None,
        body: Body | None,
        owner: str | None = None,
        declared_size: int | None = None,
    ) -> Digest:
        """Close the session (PUT): append the last chunk (or, for a direct session, join the
        parts the store holds), verify the digest, publish. ``declared_size``: the blob's size as
        the client of a direct session believes it (a session holding less is refused, kept)."""
        if not digest_text:
            raise errors.RegistryError(errors.DIGEST_INVALID, message="the digest parameter is required")
        digest = Digest.parse(digest_text)
        async with self._writer(repository, upload_id, owner) as session:
            direct = self._direct(session)
            if direct is not None:
                if body is not None:
                    self._refuse_direct(session)
                await self._complete_direct(session, direct, declared_size)
            elif body is not None and await self._takes_whole(session, chunk, length):
                # A monolithic PUT of a small blob: no staging at all (as a small single POST).
                assert length is not None
                try:
                    await self._upload_small(repository, digest, length, body, ending=session.id)
                except errors.RegistryError as exc:
                    if exc.error is errors.DIGEST_INVALID:
                        await self._discard(session)  # as _publish: never keep what does not verify
                    raise
                self._hashers.drop(session.id)
                return digest
            elif body is not None:
                await self._append(session, chunk, length, body)
            await self._publish(session, digest)
        return digest

    async def upload_whole(
        self, repository: str, digest_text: str, length: int | None, body: Body, owner: str | None = None
    ) -> Digest:
        """Single-POST upload (spec: "Single POST"): the whole blob in the POST's body."""
        digest = Digest.parse(digest_text)
        if length is not None and length <= SMALL_BLOB_BYTES:
            return await self._upload_small(repository, digest, length, body)
        session = await self.start_upload(repository, digest.algorithm, owner)
        try:
            return await self.commit_upload(repository, session.id, str(digest), None, length, body, owner)
        except BaseException:
            # The part underneath that failed the upload may fail this too (and would take its
            # retries again): the session is then purged once stale. The client hears of the first.
            with contextlib.suppress(Exception):
                await self._discard(session)
            raise

    async def _takes_whole(self, session: UploadSession, chunk: str | None, length: int | None) -> bool:
        """Whether a PUT's body is the whole of a small blob: nothing staged before it."""
        return (
            chunk is None
            and length is not None
            and length <= SMALL_BLOB_BYTES
            and session.offset == 0
            and await self.blobs.staging_size(session) == 0
        )

    async def _upload_small(
        self, repository: str, digest: Digest, length: int, body: Body, ending: str | None = None
    ) -> Digest:
        """A small blob that arrives whole: verified in memory and stored like a manifest's bytes
        (a temp file, fsync, rename, fsync of the directory), then linked; no session, no staging
        directory, one transaction."""
        check_algorithm(digest.algorithm)
        pieces: list[bytes] = []
        received = 0
        async for data in body:
            received += len(data)
            if received > length:
                raise errors.RegistryError(
                    errors.SIZE_INVALID, message="the body is longer than its declared length"
                )
            pieces.append(data)
        content = b"".join(pieces)
        if received != length:
            raise errors.RegistryError(
                errors.SIZE_INVALID, message=f"the body has {received} bytes, Content-Length says {length}"
            )
        if Digest.of(content, digest.algorithm) != digest:
            raise errors.RegistryError(
                errors.DIGEST_INVALID,
                detail={"digest": str(digest)},
                message=f"uploaded content does not match digest {digest}",
            )
        # Under the blob's lock, as _publish: a collection never sees the bytes without the link.
        async with self.meta.lock_blob(digest):
            crash_point("commit.before_move")
            with _storage_errors():
                storage_fault_point("commit.move")
                await self.blobs.put(digest, content)
            crash_point("commit.after_move")
            database_fault_point("commit.link")
            await self.meta.link_blob(repository, digest, length, ending_upload=ending)
        crash_point("commit.after_link")
        return digest

    async def cancel_upload(self, repository: str, upload_id: str, owner: str | None = None) -> None:
        async with self._writer(repository, upload_id, owner) as session:
            await self._discard(session)

    # -- direct uploads (docs/direct-uploads.md) -------------------------------------------------

    def _direct(self, session: UploadSession) -> DirectUploads | None:
        """The store's direct uploads, if ``session`` is one."""
        direct = self.blobs.direct
        return direct if direct is not None and direct.is_direct(session) else None

    def _refuse_direct(self, session: UploadSession) -> None:
        if self._direct(session) is not None:
            raise SessionError(
                DIRECT_MIX,
                session,
                "this session takes its bytes as parts sent to the object store: PATCH and a PUT "
                "with a body are refused (open an ordinary session to send chunks)",
            )

    def _direct_session(self, session: UploadSession) -> DirectUploads:
        direct = self._direct(session)
        if direct is None:
            raise SessionError(
                DIRECT_MIX,
                session,
                "this is an ordinary upload session: send its bytes with PATCH (a direct session is "
                "asked for on the POST that opens it)",
            )
        return direct

    def direct_kind(self, session: UploadSession) -> str | None:
        direct = self._direct(session)
        return direct.kind if direct is not None else None

    async def direct_status(self, session: UploadSession) -> DirectStatus:
        """The parts the store holds for a direct session (GET on the session)."""
        direct = self._direct_session(session)
        completed = direct.is_completed(session)
        parts = None
        if not completed:
            with _storage_errors():
                parts = await direct.list_parts(session)
            # None: the upload was joined by a PUT that did not finish (a PUT finishes the job).
            completed = parts is None
        if parts is None:
            parts = []
            if direct.is_completed(session):
                recorded = session.backend_state.get("parts", [])
                parts = [StoredPart(int(n), int(size), str(etag)) for n, etag, size in recorded]
        return DirectStatus(session, direct.kind, parts, completed, direct)

    async def direct_part_urls(
        self, repository: str, upload_id: str, request: object, owner: str | None = None
    ) -> tuple[UploadSession, list[PartUrl], int]:
        """Pre-signed URLs for the parts ``request`` names (``{"parts": [{number, size}]}``),
        for the session's owner only; and how long they work."""
        session = await self._session(repository, upload_id, owner)
        direct = self._direct_session(session)
        if direct.is_completed(session):
            raise SessionError(
                DIRECT_MIX, session, "the parts were joined already: PUT the session to publish the blob"
            )
        parts = parse_part_request(request, direct)
        with _storage_errors():
            urls = await direct.part_urls(session, parts)
        now = self._clock()
        if now - session.updated_at >= 1.0:
            await self.meta.touch_upload(session.id, now)  # an active session does not expire
        return session, urls, direct.url_expiry_seconds

    async def _complete_direct(
        self, session: UploadSession, direct: DirectUploads, declared_size: int | None
    ) -> None:
        """Join the parts the store holds (checked first: nothing the client says is trusted)."""
        if direct.is_completed(session):
            return
        with _storage_errors():
            parts = await direct.list_parts(session)
        if parts is not None:
            check_parts(parts, direct, declared_size)
        with _storage_errors():
            size = await direct.complete(session, parts)
        crash_point("direct.after_complete")
        session.offset = size
        session.updated_at = self._clock()
        await self.meta.save_upload(session)

    async def purge_stale_uploads(self) -> int:
        """Remove sessions idle longer than the TTL, with their staged bytes."""
        stale = await self.meta.stale_uploads(self._clock() - self.policy.upload_ttl_seconds)
        for session in stale:
            async with self.meta.lock_upload(session.id) as locked:
                if locked:
                    await self._discard(session)
        return len(stale)

    @asynccontextmanager
    async def _writer(
        self, repository: str, upload_id: str, owner: str | None
    ) -> AsyncIterator[UploadSession]:
        """The session, as its one writer (ARCHITECTURE.md invariant 3): a request racing the
        writer is refused with 416 and where the session stands, never interleaved."""
        _check_upload_id(upload_id)
        async with self.meta.lock_upload(upload_id) as locked:
            session = await self._session(repository, upload_id, owner)
            if not locked:
                # Often the holder is the client's own earlier request, whose connection died
                # where the server cannot see it: ask it to yield (_append) if it has stalled.
                await self.meta.request_takeover(upload_id)
                raise UploadOutOfOrder(
                    session,
                    "another request is writing to this upload session; if its body has stalled, "
                    f"it gives the session up within {self.policy.takeover_after_seconds:g} seconds",
                )
            yield session

    async def _session(self, repository: str, upload_id: str, owner: str | None) -> UploadSession:
        """The session, if it belongs to this repository and this client (else: unknown)."""
        _check_upload_id(upload_id)
        session = await self.meta.get_upload(upload_id)
        if session is None or session.repository != repository or session.owner != owner:
            raise errors.RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:64]})
        if session.updated_at < self._clock() - self.policy.upload_ttl_seconds:
            raise errors.RegistryError(
                errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id}, message="upload session expired"
            )
        return session

    async def _discard(self, session: UploadSession) -> None:
        self._hashers.drop(session.id)
        await self.blobs.staging_delete(session)
        await self.meta.delete_upload(session.id)

    async def _append(
        self, session: UploadSession, content_range: str | None, length: int | None, body: Body
    ) -> None:
        """Stream ``body`` onto the session's staged bytes, hashing on the way in.

        Holds the session's writer lock. Whatever happens to the connection, the session ends
        at a consistent offset that is persisted before this returns or raises.
        """
        staged = await self.blobs.staging_size(session)
        if staged is not None and staged < session.offset:
            # Staged bytes the session had recorded are gone (the machine lost unsynced data):
            # the session goes back to what is really there, and the client is told so.
            session.offset = staged
            session.updated_at = self._clock()
            await self.meta.save_upload(session)
            self._hashers.drop(session.id)
        expected: int | None = length
        try:
            chunk = ChunkRange.parse(content_range) if content_range else None
        except errors.RegistryError as exc:  # say where the session stands, whatever was wrong
            raise SessionError(exc.error, session, str(exc)) from None
        if chunk is not None:
            if chunk.start != session.offset:
                raise UploadOutOfOrder(
                    session, f"chunk starts at {chunk.start}, the session ends at {session.offset}"
                )
            if length is not None and length != chunk.length:
                raise errors.RegistryError(
                    errors.SIZE_INVALID,
                    message=f"Content-Length {length} does not match Content-Range length {chunk.length}",
                )
            expected = chunk.length
        hasher: Hasher | None = self._hashers.take(session)
        if hasher is None and session.offset == 0:
            hasher = new_hasher(session.algorithm)
        hashing = BackgroundHasher(hasher) if hasher is not None else None
        start = session.offset
        received = 0
        writer = None
        last_data = self._clock()
        close_error: BaseException | None = None
        try:
            with _storage_errors():
                writer = await self.blobs.staging_open(session)
                async for data in body:
                    if not data:  # the body stalls (a heartbeat of the HTTP layer)
                        await self._yield_if_wanted(session, last_data)
                        continue
                    last_data = self._clock()
                    if expected is not None and received + len(data) > expected:
                        raise SessionError(
                            errors.SIZE_INVALID, session, "the body is longer than its declared length"
                        )
                    storage_fault_point("patch.write")
                    await writer.write(data)
                    received += len(data)
                    if hashing is not None:
                        await hashing.update(data)
                    if received >= _CRASH_AFTER_BYTES:
                        crash_point("patch.mid_body")
        finally:
            # Whatever happened, the session's row ends at what is really staged. If that cannot
            # be learnt (the store is away), the row is left as it was: still consistent, since
            # a writer continues from the recorded offset and overwrites what lies past it.
            size = start
            if writer is not None:
                try:
                    size = await writer.close()
                except (OSError, errors.DependencyUnavailable) as exc:
                    # The last flush failed: nothing of this request may be acknowledged as more
                    # than what is really there (never a 2xx from here: see below).
                    close_error = _storage_error(exc) if isinstance(exc, OSError) else exc
                    hashing = None
                    size = await self.blobs.staging_size(session) or start
            session.offset = size
            session.updated_at = self._clock()
            crash_point("patch.before_save")
            database_fault_point("patch.save")
            await self.meta.save_upload(session)
            if hashing is not None and size == start + received:
                self._hashers.keep(session, await hashing.finish())
        if close_error is not None:
            # The body arrived but its bytes did not all reach the store: the client is told
            # (503 or 507), and GET on the session says where it stands.
            raise close_error

    async def _yield_if_wanted(self, session: UploadSession, last_data: float) -> None:
        """A body stalled past ``takeover_after_seconds`` gives its session up when a newer
        request has asked for it since this one took it (``session`` was read then, with the
        count of such requests so far; a count, so nodes' clocks need not agree): the bytes
        that arrived are kept, and the newer request (typically the same client, resuming after
        an outage its old connection never noticed) continues from there instead of waiting out
        the body timeout. A body that stalls while nobody else wants it waits the full timeout."""
        if self._clock() - last_data < self.policy.takeover_after_seconds:
            return
        if await self.meta.takeover_requests(session.id) > session.takeover_requests:
            raise SessionError(
                errors.BODY_TIMEOUT, session, "the body stalled and a newer request took the session over"
            )

    async def _publish(self, session: UploadSession, digest: Digest) -> None:
        """Verify the staged bytes against ``digest`` and make them a blob of the repository."""
        staged = await self.blobs.staging_size(session)
        if staged is not None:
            hasher = self._hashers.take(session) if session.algorithm == digest.algorithm else None
            if hasher is None:
                hashing = BackgroundHasher(new_hasher(digest.algorithm))
                async for data in self.blobs.staging_read(session):
                    await hashing.update(data)
                hasher = await hashing.finish()
            if hasher.hexdigest() != digest.hex:
                # The bytes are not what the client meant: never publish them, keep nothing.
                await self._discard(session)
                raise errors.RegistryError(
                    errors.DIGEST_INVALID,
                    detail={"digest": str(digest)},
                    message=f"uploaded content does not match digest {digest}",
                )
        # Under the blob's lock, so a garbage collection cannot delete the bytes between their
        # move into place and the link that makes them needed.
        async with self.meta.lock_blob(digest):
            if staged is None:
                # Only a commit that crashed after moving the bytes leaves no staging behind.
                if await self.blobs.stat(digest) != session.offset:
                    raise errors.RegistryError(
                        errors.BLOB_UPLOAD_INVALID, message="the session's staged bytes are gone"
                    )
            else:
                crash_point("commit.before_move")
                with _storage_errors():
                    storage_fault_point("commit.move")
                    await self.blobs.staging_commit(session, digest)
                crash_point("commit.after_move")
            database_fault_point("commit.link")
            await self.meta.link_blob(session.repository, digest, session.offset)
        crash_point("commit.after_link")
        await self._discard(session)
