"""A pull-through cache: a registry that serves another registry's content and keeps what it
fetched (README "Pull-through cache").

The rules, over the ``Upstream`` port: a tag is trusted for ``tag_ttl_seconds`` after the
upstream last confirmed it, then asked again (a HEAD, so an unchanged tag costs no download); a
digest is immutable, so what is cached by digest is never asked for again. Every byte from the
upstream is verified against its digest before it is published, as a push is. When the upstream
cannot answer, what is cached is served (a stale tag included). Pushes and deletes are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any

from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.manifests import parse_manifest
from dockyard.registry.names import Reference, is_tag
from dockyard.registry.ports import (
    BlobStore,
    ManifestRecord,
    MetadataStore,
    UploadSession,
    Upstream,
    UpstreamBlob,
    UpstreamManifest,
    UpstreamUnavailable,
)
from dockyard.registry.service import BlobInfo, Body, Policy, PushedManifest, Registry
from dockyard.registry.uploads import SessionError

log = logging.getLogger("dockyard.pullthrough")

# Owns the upload sessions the cache stages downloads in: no client can address them (user names
# have no colon), and a crashed download's session is purged like any stale one.
CACHE_OWNER = "dockyard:pull-through"
_QUEUE_PIECES = 16  # pieces between a download and the client it streams to (a few MiB at most)
_RETRY_AFTER = {"Retry-After": "30"}


@contextlib.contextmanager
def _unavailable_as(code: errors.ErrorCode) -> Iterator[None]:
    """An upstream that cannot answer, when nothing cached can stand in: the client's 503."""
    try:
        yield
    except UpstreamUnavailable as exc:
        raise errors.RegistryError(
            code, message=f"{code.message} ({exc})", headers=dict(_RETRY_AFTER)
        ) from exc


class BlobFetch:
    """One download of a blob from the upstream into the store, shared by a worker's requests.

    It runs as a task of its own, so a client that hangs up does not waste what was fetched, and
    requests that come meanwhile wait for it rather than download again. The request that started
    it streams the bytes as they arrive through a small queue: memory stays flat, a slow client
    slows the download, and one that stops reading for ``stall_timeout`` is let go.
    """

    def __init__(self, stall_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[int | None] = loop.create_future()  # the upstream's size
        self.done: asyncio.Future[None] = loop.create_future()
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_QUEUE_PIECES)
        self._listening = True
        self._stall_timeout = stall_timeout

    # -- the download's side

    async def deliver(self, item: bytes | BaseException | None) -> None:
        """Hand a piece (None: the end; an exception: the failure) to the streaming request."""
        if not self._listening:
            return
        try:
            async with asyncio.timeout(self._stall_timeout):
                await self._queue.put(item)
        except TimeoutError:
            self.release()
            self._queue.put_nowait(
                errors.RegistryError(errors.BODY_TIMEOUT, message="the client stopped reading the blob")
            )

    def fail(self, error: BaseException) -> None:
        """The download failed: waiters get ``error``, and so does the streaming request, at
        once (pieces it has not taken yet are dropped: its response cannot complete anyway)."""
        self.settle(error)
        if self._listening:
            self.release()
            self._queue.put_nowait(error)

    def settle(self, error: BaseException | None) -> None:
        for future in (self.started, self.done):
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting, which is no error

    # -- the requests' side (``IncomingBlob`` for the request that started it)

    async def stream(self) -> Body:
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.release()

    async def stored(self) -> None:
        self.release()
        await self.wait()

    def release(self) -> None:
        self._listening = False
        while not self._queue.empty():
            self._queue.get_nowait()

    async def wait(self) -> None:
        """Until the blob is stored (or the download failed: then raise its error)."""
        await asyncio.shield(self.done)


class PullThroughRegistry(Registry):
    """A read-only registry over a local store that fills itself from an upstream registry."""

    def __init__(
        self,
        blobs: BlobStore,
        meta: MetadataStore,
        upstream: Upstream,
        policy: Policy | None = None,
        tag_ttl_seconds: float = 300.0,
        stall_timeout: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(blobs, meta, policy, clock)
        self.upstream = upstream
        self.tag_ttl_seconds = tag_ttl_seconds
        self._stall_timeout = stall_timeout
        self._fetches: dict[tuple[str, Digest], BlobFetch] = {}  # downloads not settled yet
        self._downloads: set[asyncio.Task[None]] = set()  # running (a settled one may still stream)
        self._refreshes: dict[tuple[str, str], asyncio.Task[ManifestRecord]] = {}

    async def close_upstream(self) -> None:
        """Stop the downloads under way (their staging is discarded) and close the connections."""
        tasks = list(self._downloads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.upstream.close()

    # -- manifests -----------------------------------------------------------------------------

    async def manifest_record(self, repository: str, reference: Reference) -> ManifestRecord:
        if reference.digest is not None:
            record = await self.meta.get_manifest(repository, reference.digest)
            if record is not None:
                return record
            with _unavailable_as(errors.UPSTREAM_MANIFEST_UNAVAILABLE):
                return await self._pull_manifest(repository, reference.digest, None, None)
        assert reference.tag is not None
        tag = reference.tag
        cached = await self.meta.resolve_tag(repository, tag)
        if cached is not None and await self._fresh(repository, tag):
            return cached
        try:
            return await self._single_flight(
                (repository, tag), lambda: self._refresh_tag(repository, tag, cached)
            )
        except UpstreamUnavailable as exc:
            if cached is None:
                raise errors.RegistryError(
                    errors.UPSTREAM_MANIFEST_UNAVAILABLE,
                    message=f"{errors.UPSTREAM_MANIFEST_UNAVAILABLE.message} ({exc})",
                    headers=dict(_RETRY_AFTER),
                ) from exc
            log.warning(
                "upstream unavailable (%s): serving %s:%s as cached (%s)", exc, repository, tag, cached.digest
            )
            return cached

    async def _fresh(self, repository: str, tag: str) -> bool:
        checked = await self.meta.tag_updated_at(repository, tag)
        return checked is not None and self._clock() - checked < self.tag_ttl_seconds

    async def _single_flight(
        self, key: tuple[str, str], work: Callable[[], Coroutine[Any, Any, ManifestRecord]]
    ) -> ManifestRecord:
        """One upstream round trip per tag at a time in this worker; the others share its answer.
        It runs as a task of its own, so a client that hangs up does not cancel it for the rest."""
        running = self._refreshes.get(key)
        if running is None:
            running = asyncio.create_task(work())
            self._refreshes[key] = running
            running.add_done_callback(lambda task: self._forget_refresh(key, task))
        return await asyncio.shield(running)

    def _forget_refresh(self, key: tuple[str, str], task: asyncio.Task[ManifestRecord]) -> None:
        self._refreshes.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every request that awaited it may have gone

    async def _refresh_tag(self, repository: str, tag: str, cached: ManifestRecord | None) -> ManifestRecord:
        """Ask the upstream where the tag points now; fetch the manifest only if it moved."""
        found = await self.upstream.resolve_manifest(repository, tag)
        if found is None:
            # The upstream has no such tag (any more), so neither has its cache.
            if cached is not None:
                await self.meta.delete_tag_if(repository, tag, cached.digest)
            raise errors.RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": tag})
        if cached is not None and found.digest == cached.digest:
            await self.meta.touch_tag(repository, tag, cached.digest)
            return cached
        async with self.meta.lock_blob(found.digest):
            record = await self.meta.get_manifest(repository, found.digest)
            if record is not None:  # moved to a manifest cached already (pulled by digest)
                await self.meta.put_manifest(repository, record, (), [tag])
                return record
        return await self._pull_manifest(repository, found.digest, tag, found)

    async def _pull_manifest(
        self, repository: str, digest: Digest, tag: str | None, found: UpstreamManifest | None
    ) -> ManifestRecord:
        """Fetch a manifest by digest, verify and validate it as a push would be, and store it."""
        if found is None or found.body is None:
            found = await self.upstream.fetch_manifest(repository, digest)
            if found is None:
                raise errors.RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": str(digest)})
        assert found.body is not None
        body = found.body
        if len(body) > self.policy.manifest_max_bytes:
            raise errors.RegistryError(
                errors.UPSTREAM_MANIFEST_INVALID,
                message=f"the upstream's manifest {digest} exceeds the size limit",
                detail={"limit": self.policy.manifest_max_bytes},
            )
        if Digest.of(body, digest.algorithm) != digest:
            raise errors.RegistryError(errors.UPSTREAM_DIGEST_INVALID, detail={"digest": str(digest)})
        try:
            parsed = parse_manifest(body, found.media_type)
        except errors.RegistryError as exc:
            raise errors.RegistryError(
                errors.UPSTREAM_MANIFEST_INVALID, message=f"the upstream's manifest {digest}: {exc}"
            ) from None
        # What it references is fetched when a client asks for it, not required up front.
        refs = [replace(ref, required=False) for ref in parsed.refs()]
        await self._save_manifest(repository, digest, body, parsed, refs, [tag] if tag else [])
        return parsed.record(digest, len(body))

    # -- blobs ---------------------------------------------------------------------------------

    async def blob_info(
        self, repository: str, digest: Digest, want_redirect: bool = False, want_bytes: bool = False
    ) -> BlobInfo:
        """A cached blob as always; a missing one from the upstream: its size for a HEAD, a
        download (streamed to this request as it arrives) for a GET."""
        try:
            return await super().blob_info(repository, digest, want_redirect, want_bytes)
        except errors.RegistryError as exc:
            if exc.error is not errors.BLOB_UNKNOWN:
                raise
        key = (repository, digest)
        if key not in self._fetches:
            with _unavailable_as(errors.UPSTREAM_BLOB_UNAVAILABLE):
                if await self._link_if_stored(repository, digest):
                    return await super().blob_info(repository, digest, want_redirect)
                if not want_bytes:
                    return BlobInfo(digest, await self._upstream_size(repository, digest), None, None)
        # No await between this look and the start of a download: one download per blob.
        fetch = self._fetches.get(key)
        if fetch is not None:
            # This worker is downloading it already: wait for that, then serve it from here.
            # (Another worker or node may download it too; content addressing makes that safe.)
            if not want_bytes:
                size = await asyncio.shield(fetch.started)
                if size is not None:
                    return BlobInfo(digest=digest, size=size, path=None, redirect=None)
            await fetch.wait()
            return await super().blob_info(repository, digest, want_redirect)
        fetch = self._start_fetch(repository, digest)
        try:
            size = await asyncio.shield(fetch.started)
            if size is None:  # the upstream did not say how long: serve it once it is all here
                await fetch.stored()
                return await super().blob_info(repository, digest, want_redirect)
        except BaseException:
            fetch.release()
            raise
        return BlobInfo(digest=digest, size=size, path=None, redirect=None, incoming=fetch)

    async def _upstream_size(self, repository: str, digest: Digest) -> int:
        size = await self.upstream.blob_size(repository, digest)
        if size is None:
            raise errors.RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})
        return size

    async def _link_if_stored(self, repository: str, digest: Digest) -> bool:
        """A blob cached for another repository is linked here once the upstream confirms this
        repository has it too: a HEAD instead of a download."""
        size = await self.meta.blob_size(digest)
        if size is None or await self.blobs.stat(digest) != size:
            return False
        if await self._upstream_size(repository, digest) != size:
            return False
        async with self.meta.lock_blob(digest):
            if await self.blobs.stat(digest) != size:
                return False
            await self.meta.link_blob(repository, digest, size)
        return True

    def _start_fetch(self, repository: str, digest: Digest) -> BlobFetch:
        fetch = BlobFetch(self._stall_timeout)
        self._fetches[(repository, digest)] = fetch
        task = asyncio.create_task(self._download(repository, digest, fetch))
        self._downloads.add(task)
        task.add_done_callback(self._downloads.discard)
        return fetch

    def _settle(self, repository: str, digest: Digest, fetch: BlobFetch, error: BaseException | None) -> None:
        """The download is over: a request from now on finds the blob stored, or tries anew."""
        if self._fetches.get((repository, digest)) is fetch:
            del self._fetches[(repository, digest)]
        if error is None:
            fetch.settle(None)
        else:
            fetch.fail(error)

    async def _download(self, repository: str, digest: Digest, fetch: BlobFetch) -> None:
        """Stage the upstream's bytes, hashing them on the way; publish them only if they match
        the digest. The streaming request gets each piece as it is staged, except the last,
        which it gets only once the digest has verified."""
        session: UploadSession | None = None
        held: list[bytes] = []
        try:
            async with self.upstream.open_blob(repository, digest) as blob:
                if blob is None:
                    raise errors.RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})
                fetch.started.set_result(blob.size)
                session = await self._cache_session(repository, digest)
                await self._append(session, None, blob.size, self._tee(blob, fetch, held))
            if blob.size is not None and session.offset != blob.size:
                raise errors.RegistryError(
                    errors.UPSTREAM_DIGEST_INVALID,
                    message=f"the upstream sent {session.offset} bytes of {blob.size}",
                )
            await self._publish(session, digest)
        except BaseException as exc:
            self._settle(repository, digest, fetch, self._download_error(exc, digest))
            if session is not None:
                try:
                    await asyncio.shield(self._discard(session))
                except Exception:  # the session stays for the stale-session purge
                    log.exception("discarding the staging of blob %s failed", digest)
            if not isinstance(exc, Exception):
                raise  # cancelled: the worker is stopping
            return
        self._settle(repository, digest, fetch, None)
        for piece in held:
            await fetch.deliver(piece)
        await fetch.deliver(None)

    @staticmethod
    async def _tee(blob: UpstreamBlob, fetch: BlobFetch, held: list[bytes]) -> AsyncIterator[bytes]:
        """The upstream's pieces, each handed on to the streaming request once the next arrived."""
        async for data in blob.chunks:
            if held:
                await fetch.deliver(held.pop())
            held.append(data)
            yield data

    async def _cache_session(self, repository: str, digest: Digest) -> UploadSession:
        now = self._clock()
        session = UploadSession(
            id=str(uuid.uuid4()),
            repository=repository,
            algorithm=digest.algorithm,
            created_at=now,
            updated_at=now,
            owner=CACHE_OWNER,
        )
        await self.meta.create_upload(session)
        return session

    @staticmethod
    def _download_error(exc: BaseException, digest: Digest) -> errors.RegistryError:
        """What a failed download tells the requests that wait for it."""
        if isinstance(exc, UpstreamUnavailable):
            code = errors.UPSTREAM_BLOB_UNAVAILABLE
            return errors.RegistryError(code, message=f"{code.message} ({exc})", headers=dict(_RETRY_AFTER))
        if isinstance(exc, SessionError) or (
            isinstance(exc, errors.RegistryError) and exc.error is errors.DIGEST_INVALID
        ):
            log.warning("upstream blob %s failed verification: %s; not stored", digest, exc)
            return errors.RegistryError(errors.UPSTREAM_DIGEST_INVALID, detail={"digest": str(digest)})
        if isinstance(exc, errors.RegistryError):
            return exc
        if isinstance(exc, Exception):
            log.error("downloading blob %s from the upstream failed", digest, exc_info=exc)
        return errors.RegistryError(errors.INTERNAL)

    # -- discovery -----------------------------------------------------------------------------

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool]:
        """The upstream's tags; the cached ones when the upstream cannot answer."""
        if limit == 0:
            return [], False
        try:
            page = await self.upstream.list_tags(repository, limit, last)
        except UpstreamUnavailable as exc:
            log.warning("upstream unavailable (%s): listing the cached tags of %s", exc, repository)
            return await super().list_tags(repository, limit, last)
        if page is None:
            raise errors.RegistryError(errors.NAME_UNKNOWN, detail={"name": repository})
        tags, more = page
        tags = [t for t in tags if is_tag(t)]
        return tags[:limit], more or len(tags) > limit

    # -- read-only -----------------------------------------------------------------------------

    @staticmethod
    def _read_only() -> errors.RegistryError:
        return errors.RegistryError(errors.READ_ONLY)

    async def put_manifest(self, *args: Any, **kwargs: Any) -> PushedManifest:
        raise self._read_only()

    async def delete_manifest(self, *args: Any, **kwargs: Any) -> None:
        raise self._read_only()

    async def delete_blob(self, *args: Any, **kwargs: Any) -> None:
        raise self._read_only()

    async def delete_repository(self, *args: Any, **kwargs: Any) -> None:
        raise self._read_only()

    async def start_upload(self, *args: Any, **kwargs: Any) -> UploadSession:
        raise self._read_only()

    async def mount_blob(self, *args: Any, **kwargs: Any) -> int | None:
        raise self._read_only()

    async def upload_whole(self, *args: Any, **kwargs: Any) -> Digest:
        raise self._read_only()

    async def upload_status(self, *args: Any, **kwargs: Any) -> UploadSession:
        raise self._read_only()

    async def append_chunk(self, *args: Any, **kwargs: Any) -> UploadSession:
        raise self._read_only()

    async def commit_upload(self, *args: Any, **kwargs: Any) -> Digest:
        raise self._read_only()

    async def cancel_upload(self, *args: Any, **kwargs: Any) -> None:
        raise self._read_only()
