"""Resumable blob uploads (spec: "Pushing blobs", "Pushing a blob in chunks", "Mounting a blob").

The order of things for one blob: already there (``HEAD``)? → mount (``?mount=&from=``) → an
upload session left by an earlier run (the resume state) → single ``POST ?digest=`` for a small
blob where the registry takes it → a session, fed in chunks (``PATCH`` with ``Content-Range``) of
``chunk_size`` bytes (never less than the registry's ``OCI-Chunk-Min-Length``), closed by
``PUT ?digest=``.

Each request goes to the latest ``Location``. When a chunk fails — the connection drops, a
timeout, a ``5xx``, a ``416`` — the uploader asks the session where it stands (``GET`` on the
latest Location, then on the first one) or takes the ``Location`` and ``Range`` a ``416`` carries,
and sends from the registry's offset: bytes that arrived are never sent again. Attempts in a row
that make no progress are bounded, with back-off between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from yarl import URL

from dockyard.client.direct import DIRECT_HEADER, KIND, DirectSession, DirectUnavailable, offered, send_direct
from dockyard.client.progress import Progress
from dockyard.client.registry import (
    FAULTS,
    TRANSPORT_ERRORS,
    Answer,
    Registry,
    RegistryError,
    backoff_delay,
    error_from,
    repository_scope,
)
from dockyard.client.state import ResumeState

DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_SINGLE_POST_MAX = 1024 * 1024
_READ_SIZE = 1024 * 1024


class BlobSource(Protocol):
    """Where a blob's bytes come from: any byte range, as often as asked."""

    size: int

    def read(self, offset: int, length: int) -> AsyncIterator[bytes]: ...


class FileSource:
    """A blob in a local file (an OCI layout's ``blobs/sha256/<hex>``)."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        self.size = size if size is not None else path.stat().st_size

    async def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                data = f.read(min(_READ_SIZE, left))
                if not data:
                    raise OSError(
                        f"{self.path} ended at {offset + length - left}, expected {offset + length}"
                    )
                left -= len(data)
                yield data


class BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    async def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        yield self.data[offset : offset + length]


class RegistryBlobSource:
    """A blob in another repository (``copy``): each range is a ranged ``GET``, redirects followed."""

    def __init__(self, registry: Registry, repository: str, digest: str, size: int) -> None:
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.size = size

    async def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        url = self.registry.url(f"/v2/{self.repository}/blobs/{self.digest}")
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"} if length < self.size else {}
        async with self.registry.open(
            "GET",
            url,
            scopes=[repository_scope(self.repository, "pull")],
            headers=headers,
            follow_redirects=True,
        ) as response:
            if response.status not in (200, 206):
                raise error_from(response.status, await response.read(), str(url))
            skip = offset if response.status == 200 else 0
            left = length
            async for data in response.content.iter_chunked(_READ_SIZE):
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                data = data[:left]
                left -= len(data)
                if data:
                    yield data
                if left <= 0:
                    return
            if left > 0:
                raise ConnectionError(f"the source blob ended {left} bytes early")


@dataclass
class UploadResult:
    digest: str
    size: int
    how: str  # "exists", "mounted", "single-post", "chunked", "resumed", "direct"
    sent: int = 0  # body bytes sent (all attempts)
    faults: int = 0  # requests that failed and were continued from the registry's offset


class SessionGone(Exception):
    """The upload session is unknown to the registry (expired, cancelled or never there)."""


@dataclass
class _Session:
    location: URL
    original: URL
    offset: int = 0
    min_chunk: int = 0
    direct: DirectSession | None = None  # the bytes go to the object store (client/direct.py)


def parse_upload_range(header: str | None) -> int | None:
    """The offset a session's ``Range: 0-<last>`` reports (``0--1`` and ``0-0`` both mean empty)."""
    if not header:
        return None
    text = header.strip().removeprefix("bytes=").removeprefix("bytes ")
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit():
        return None
    try:
        last = int(end)
    except ValueError:
        return None
    # ``0-0`` is ambiguous (Distribution sends it for an empty session): read it as empty; a
    # registry holding one byte answers the next chunk with a 416 that says so.
    return 0 if last <= 0 else last + 1


class BlobUploader:
    """Uploads blobs into one repository of one registry, resumably."""

    def __init__(
        self,
        registry: Registry,
        repository: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        single_post_max: int = DEFAULT_SINGLE_POST_MAX,
        state: ResumeState | None = None,
        progress: Progress | None = None,
        direct: bool = True,
        jobs: int = 3,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.chunk_size = chunk_size
        self.single_post_max = single_post_max
        self.state = state if state is not None else ResumeState(None)
        self.progress = progress or Progress(quiet=True)
        self.destination = f"{registry.base}/{repository}"
        self.scopes = [repository_scope(repository, "pull", "push")]
        self.direct = direct  # ask for direct-to-bucket sessions where the registry offers them
        self.part_slots = asyncio.Semaphore(max(1, jobs))  # direct parts in flight, all blobs

    def _url(self, path: str) -> URL:
        return self.registry.url(f"/v2/{self.repository}/{path}")

    async def exists(self, digest: str) -> int | None:
        """The blob's size if the repository has it (``HEAD``)."""

        async def head() -> int | None:
            answer = await self.registry.call(
                "HEAD", self._url(f"blobs/{digest}"), scopes=self.scopes, ok=(200, 404), follow_redirects=True
            )
            if answer.status != 200:
                return None
            length = answer.header("Content-Length")
            return int(length) if length and length.isdigit() else -1

        result: int | None = await self.registry.retrying("HEAD blob", head)
        return result

    async def upload(
        self, digest: str, source: BlobSource, label: str | None = None, mount_from: str | None = None
    ) -> UploadResult:
        """Make ``digest`` (``source.size`` bytes) a blob of the repository, however it takes."""
        label = label or digest[:19]
        size = source.size
        if await self.exists(digest) is not None:
            self.state.drop(self.destination, digest)
            self.progress.finish(digest, f"{label}: already there")
            return UploadResult(digest, size, "exists")
        session: _Session | None = None
        if mount_from is not None:
            mounted, session = await self._mount(digest, mount_from)
            if mounted:
                self.progress.finish(digest, f"{label}: mounted from {mount_from}")
                return UploadResult(digest, size, "mounted")
        how = "chunked"
        if session is None:
            session = await self._resume(digest)
            if session is not None:
                how = "resumed"
        result = UploadResult(digest, size, how)
        self.progress.start(digest, label, size, session.offset if session else 0)
        small = size <= min(self.single_post_max, self.chunk_size) and self.registry.single_post is not False
        if session is None and small and await self._single_post(digest, source, result):
            self.progress.finish(digest, "pushed (single POST)")
            return result
        restarts = 0
        while True:
            if session is None:
                session = await self._open_session()
                self.state.put(self.destination, digest, str(session.location), str(session.original), size)
            try:
                if session.direct is not None:
                    part_size = max(self.chunk_size, session.min_chunk)
                    await send_direct(
                        self, digest, source, session.location, session.direct, result, part_size
                    )
                    result.how = "direct"
                else:
                    await self._send(digest, source, session, result)
            except DirectUnavailable as exc:
                # The registry offered the store, but it cannot be reached from here.
                self.progress.note(
                    digest, f"the object store cannot be reached ({exc}); through the registry"
                )
                self.direct = False
                with contextlib.suppress(*FAULTS):
                    await self.registry.call(
                        "DELETE", session.location, scopes=self.scopes, ok=range(200, 500)
                    )
                self.state.drop(self.destination, digest)
                session = None
                continue
            except SessionGone:
                # The registry forgot the session (expired, or cancelled after a bad digest):
                # a new one, a bounded number of times.
                self.state.drop(self.destination, digest)
                if await self.exists(digest) is not None:
                    break
                restarts += 1
                if restarts > 2:
                    raise RegistryError(
                        404, "the upload session keeps disappearing", str(session.location)
                    ) from None
                self.progress.note(digest, "the registry lost the upload session; starting a new one")
                session = None
                continue
            break
        self.state.drop(self.destination, digest)
        self.progress.finish(
            digest, "pushed" + (f" ({result.faults} faults recovered)" if result.faults else "")
        )
        return result

    # -- the fast paths -------------------------------------------------------------------------

    async def _mount(self, digest: str, source: str) -> tuple[bool, _Session | None]:
        url = self._url("blobs/uploads/").with_query({"mount": digest, "from": source})
        scopes = [*self.scopes, repository_scope(source, "pull")]
        answer = await self.registry.retrying(
            "mount",
            lambda: self.registry.call(
                "POST", url, scopes=scopes, headers=self._direct_header(), ok=(201, 202)
            ),
        )
        if answer.status == 201:
            return True, None
        return False, self._session_from(answer.url, answer.header("Location"), answer)

    async def _single_post(self, digest: str, source: BlobSource, result: UploadResult) -> bool:
        """``POST ?digest=`` with the whole blob; False (and remembered) where the registry won't."""
        data = b"".join([piece async for piece in source.read(0, source.size)])
        url = self._url("blobs/uploads/").with_query({"digest": digest})
        answer = await self.registry.retrying(
            "single POST",
            lambda: self.registry.call(
                "POST",
                url,
                scopes=self.scopes,
                body=data,
                headers={"Content-Type": "application/octet-stream"},
                ok=range(200, 500),
            ),
        )
        result.sent += len(data)
        if answer.status == 201:
            self.registry.single_post = True
            result.how = "single-post"
            return True
        self.registry.single_post = False
        if answer.status == 202 and answer.header("Location"):
            # The registry opened a session and ignored the body: cancel it, take the usual path.
            location = self.registry.resolve(answer.url, answer.header("Location") or "")
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await self.registry.call("DELETE", location, scopes=self.scopes, ok=range(200, 500))
        return False

    # -- sessions -------------------------------------------------------------------------------

    def _direct_header(self) -> dict[str, str]:
        return {DIRECT_HEADER: KIND} if self.direct else {}

    def _session_from(self, url: URL, location: str | None, answer: Answer) -> _Session:
        if not location:
            raise RegistryError(202, "the registry opened an upload session without a Location", str(url))
        resolved = self.registry.resolve(url, location)
        min_chunk = answer.header("oci-chunk-min-length") or ""
        direct = offered(answer) if self.direct else None
        return _Session(resolved, resolved, 0, int(min_chunk) if min_chunk.isdigit() else 0, direct)

    async def _open_session(self) -> _Session:
        answer = await self.registry.retrying(
            "open session",
            lambda: self.registry.call(
                "POST",
                self._url("blobs/uploads/"),
                scopes=self.scopes,
                headers=self._direct_header(),
                ok=(202,),
            ),
        )
        return self._session_from(answer.url, answer.header("Location"), answer)

    async def _resume(self, digest: str) -> _Session | None:
        entry = self.state.get(self.destination, digest)
        if entry is None:
            return None
        try:
            session = _Session(URL(entry["location"], encoded=True), URL(entry["original"], encoded=True))
            await self.registry.retrying("session status", lambda: self._where(session))
        except (SessionGone, KeyError, TypeError, ValueError):
            self.state.drop(self.destination, digest)
            return None
        return session

    async def _where(self, session: _Session) -> None:
        """Ask the session where it stands (the latest Location, then the first one)."""
        for url in dict.fromkeys([session.location, session.original]):
            answer = await self.registry.call("GET", url, scopes=self.scopes, ok=range(200, 600))
            if answer.status in (200, 204):
                offset = parse_upload_range(answer.header("Range"))
                session.offset = offset if offset is not None else 0
                session.direct = offered(answer)
                if answer.header("Location"):
                    session.location = self.registry.resolve(answer.url, answer.header("Location") or "")
                return
            if answer.status >= 500 or answer.status in (408, 429):
                raise answer.error()
        raise SessionGone()

    async def _backoff(self, attempt: int) -> None:
        options = self.registry.options
        await asyncio.sleep(backoff_delay(attempt, options.backoff_base, options.backoff_max))

    async def _send(self, digest: str, source: BlobSource, session: _Session, result: UploadResult) -> None:
        """Chunks from the session's offset to the end, then the closing ``PUT``."""
        size = source.size
        failures = 0
        suspect = False  # after a fault: the next chunk waits for "100 Continue"
        chunk_size = max(self.chunk_size, session.min_chunk)
        while True:
            before = session.offset
            try:
                if session.offset >= size:
                    if await self._commit(digest, session):
                        return
                else:
                    length = min(chunk_size, size - session.offset)
                    await self._patch(digest, source, session, length, result, suspect)
            except SessionGone:
                raise
            except FAULTS as exc:
                if isinstance(exc, RegistryError) and exc.status < 500 and exc.status not in (408, 429):
                    raise
                failures += 1
                result.faults += 1
                suspect = True
                self.progress.note(digest, f"{_describe(exc)} at {session.offset}; asking the registry")
                if failures > self.registry.options.retries:
                    raise
                await self._backoff(failures)
                try:
                    await self._where(session)
                    if isinstance(exc, TimeoutError):
                        # Our timed-out request may still hold the session on the registry's
                        # side (it has not seen the connection go): wait for it to let go
                        # rather than send a chunk only to have it refused.
                        await self._wait_until_free(session)
                except SessionGone:
                    raise
                except FAULTS:
                    continue  # still unreachable: back off again
                self.progress.update(digest, session.offset)
                continue
            if session.offset > before:
                failures, suspect = 0, False
                self.progress.update(digest, session.offset)
                continue
            # A 416 at the offset we sent from: an earlier request (one whose connection died on
            # our side) still owns the session. Wait, cheaply, until it lets go.
            failures += 1
            suspect = True
            if failures > self.registry.options.retries:
                raise RegistryError(416, "the upload session makes no progress", str(session.location))
            await self._wait_until_free(session)

    async def _wait_until_free(self, session: _Session) -> None:
        """Empty ``PATCH``es with back-off until the session takes one (or moved on).

        An empty PATCH appends nothing; the registry answers it at once, with where the session
        stands, or with 416 while another request holds the session. A registry that refuses
        empty PATCHes just gets the back-off.
        """
        options = self.registry.options
        deadline = asyncio.get_running_loop().time() + options.busy_wait
        offset = session.offset
        attempt = 0
        while True:
            attempt += 1
            await self._backoff(attempt)
            try:
                answer = await self.registry.call(
                    "PATCH",
                    session.location,
                    scopes=self.scopes,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
                    body=b"",
                    ok=range(100, 600),
                )
            except TRANSPORT_ERRORS:
                answer = None
            if answer is not None:
                if answer.header("Location"):
                    session.location = self.registry.resolve(answer.url, answer.header("Location") or "")
                reported = parse_upload_range(answer.header("Range"))
                if answer.status in (202, 204):
                    session.offset = reported if reported is not None else offset
                    return
                if answer.status == 404:
                    raise SessionGone()
                if answer.status == 416 and reported is not None and reported != offset:
                    session.offset = reported
                    return
                if answer.status not in (416, 408, 429) and answer.status < 500:
                    return  # empty PATCHes not taken here: back-off was all we could do
            if asyncio.get_running_loop().time() > deadline:
                raise RegistryError(416, "the upload session stayed busy", str(session.location))

    async def _patch(
        self,
        digest: str,
        source: BlobSource,
        session: _Session,
        length: int,
        result: UploadResult,
        expect_continue: bool = False,
    ) -> None:
        start = session.offset

        def body() -> AsyncIterator[bytes]:
            return source.read(start, length)

        progressed = 0

        def sent(n: int) -> None:
            nonlocal progressed
            progressed += n
            result.sent += n
            self.progress.update(digest, start + progressed)

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + length - 1}",
            "Content-Length": str(length),
        }
        async with self.registry.open(
            "PATCH",
            session.location,
            scopes=self.scopes,
            headers=headers,
            body=body,
            on_progress=sent,
            expect_continue=expect_continue,
        ) as response:
            data = await response.read()
            status, url = response.status, response.url
            location = response.headers.get("Location")
            reported = parse_upload_range(response.headers.get("Range"))
        if location:
            session.location = self.registry.resolve(url, location)
        if status in (202, 204):
            session.offset = reported if reported is not None else start + length
            return
        if status == 416 and reported is not None:
            # spec: a 416 may carry where the session stands; dockyard's always does.
            session.offset = reported
            if reported != start:
                result.faults += 1
            return
        if status == 416:
            await self._where(session)
            return
        if status == 404:
            raise SessionGone()
        raise error_from(status, data, str(url))

    async def _commit(self, digest: str, session: _Session) -> bool:
        url = session.location.update_query({"digest": digest})
        answer = await self.registry.call(
            "PUT", url, scopes=self.scopes, headers={"Content-Length": "0"}, ok=range(200, 600)
        )
        if answer.status == 201:
            return True
        if answer.status == 404 and await self.exists(digest) is not None:
            return True  # the answer to an earlier PUT was lost: the blob is there
        if answer.status == 404:
            raise SessionGone()
        if answer.status == 416:
            offset = parse_upload_range(answer.header("Range"))
            if offset is not None:
                session.offset = offset
                return False
        raise answer.error()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, RegistryError):
        return f"the registry answered {exc.status}"
    return f"connection lost ({type(exc).__name__})"
