"""Direct-to-bucket uploads, the client's side (docs/direct-uploads.md).

A session opened with ``Dockyard-Upload-Direct: s3-multipart`` that the registry answers with
the same header takes its bytes as parts, sent straight to the object store: for each part the
client asks the registry for a pre-signed URL (``POST <session>/parts``) and ``PUT``s the bytes
there, ``jobs`` parts at a time; then ``PUT <session>?digest=`` at the registry closes it. A part
that fails is sent again (a fresh URL when the old one is refused, e.g. expired); a resumed
session first asks which parts the store holds (``GET <session>``) and sends only the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from dockyard.client.registry import TRANSPORT_ERRORS, Answer, RegistryError, backoff_delay
from dockyard.client.tasks import run_all

if TYPE_CHECKING:
    from dockyard.client.upload import BlobSource, BlobUploader, UploadResult

KIND = "s3-multipart"
DIRECT_HEADER = "Dockyard-Upload-Direct"
PARTS_HEADER = "Dockyard-Upload-Parts"
SIZE_HEADER = "Dockyard-Upload-Size"
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's, for every part but the last


class DirectUnavailable(Exception):
    """The object store cannot be reached from here: the blob goes through the registry instead."""


@dataclass
class DirectSession:
    """What the registry said of a direct session: its kind and where parts are asked for."""

    kind: str
    parts_url: URL
    held: dict[int, int] = field(default_factory=dict)  # part number -> size the store holds
    completed: bool = False


def offered(answer: Answer) -> DirectSession | None:
    """The direct session a ``202`` (or a ``GET`` on the session) describes, if it is one."""
    kind = (answer.header(DIRECT_HEADER) or "").strip().lower()
    parts = answer.header(PARTS_HEADER)
    if kind != KIND or not parts:
        return None
    direct = DirectSession(kind, answer.url.join(URL(parts, encoded=True)))
    if answer.status == 200 and answer.body:
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            doc = answer.json()
            direct.held = {int(p["number"]): int(p["size"]) for p in doc.get("parts", [])}
            direct.completed = doc.get("state") == "completed"
    return direct


def plan_parts(size: int, part_size: int) -> dict[int, tuple[int, int]]:
    """Part number -> (offset, length): ``part_size`` each (more if 10,000 parts would not do)."""
    part_size = max(part_size, -(-size // MAX_PARTS), 1)
    return {
        i + 1: (offset, min(part_size, size - offset)) for i, offset in enumerate(range(0, size, part_size))
    }


async def send_direct(
    uploader: BlobUploader,
    digest: str,
    source: BlobSource,
    location: URL,
    direct: DirectSession,
    result: UploadResult,
    part_size: int,
) -> None:
    """Upload the parts the store lacks, then close the session at the registry."""
    registry = uploader.registry
    first = direct.held.get(1, 0)
    if first >= min(MIN_PART_SIZE, source.size):
        part_size = first  # resumed: the parts are cut as the earlier run cut them
    plan = plan_parts(source.size, part_size)
    if any(n not in plan for n in direct.held) and not direct.completed:
        # Parts past the blob's end (cut another way): S3 cannot delete a part; start afresh.
        with contextlib.suppress(*TRANSPORT_ERRORS, RegistryError):
            await registry.call("DELETE", location, scopes=uploader.scopes, ok=range(200, 500))
        from dockyard.client.upload import SessionGone

        raise SessionGone()
    for attempt in range(3):
        if not direct.completed:
            missing = [n for n, (_, length) in plan.items() if direct.held.get(n) != length]
            done = sum(length for n, (_, length) in plan.items() if n not in missing)
            uploader.progress.update(digest, done)
            progress = _Progress(uploader, digest, done, result)
            fresh = not direct.held
            await run_all(_send_part(uploader, direct, n, plan[n], source, progress, fresh) for n in missing)
        answer = await _close(uploader, location, digest, source.size)
        if answer.status == 201:
            return
        if answer.status == 404:
            from dockyard.client.upload import SessionGone

            raise SessionGone()
        if answer.status != 400 or attempt == 2 or _code(answer) != "BLOB_UPLOAD_INVALID":
            raise answer.error()
        # The store lacks a part (or holds one of another size): ask what it holds, send the rest.
        uploader.progress.note(digest, f"{answer.error().message}; sending the parts the store lacks")
        status = await registry.retrying(
            "session status", lambda: registry.call("GET", location, scopes=uploader.scopes, ok=(200,))
        )
        direct = offered(status) or direct


async def _close(uploader: BlobUploader, location: URL, digest: str, size: int) -> Answer:
    """``PUT <session>?digest=``. A ``416`` says another request holds the session: an earlier
    PUT of ours whose answer a timeout lost, still assembling the parts. Wait for it with
    back-off (up to ``busy_wait``) and ask again; if it completed the blob, the session is gone
    (``404``) and the caller finds the blob."""
    registry = uploader.registry
    loop = asyncio.get_running_loop()
    deadline = loop.time() + registry.options.busy_wait
    attempt = 0
    while True:
        answer: Answer = await registry.retrying(
            "PUT session",
            lambda: registry.call(
                "PUT",
                location.update_query({"digest": digest}),
                scopes=uploader.scopes,
                headers={"Content-Length": "0", SIZE_HEADER: str(size)},
                ok=range(200, 500),
            ),
        )
        if answer.status != 416 or loop.time() > deadline:
            return answer
        attempt += 1
        uploader.progress.note(digest, "the session is busy with an earlier request; waiting for it")
        options = registry.options
        await asyncio.sleep(backoff_delay(attempt, options.backoff_base, options.backoff_max))


def _code(answer: Answer) -> str | None:
    return answer.error().code


class _Progress:
    """Bytes of the blob the store holds or is receiving, for the progress bar and the report."""

    def __init__(self, uploader: BlobUploader, digest: str, done: int, result: UploadResult) -> None:
        self.uploader, self.digest, self.done, self.result = uploader, digest, done, result

    def sent(self, n: int) -> None:
        self.done += n
        self.result.sent += n
        self.uploader.progress.update(self.digest, self.done)

    def undo(self, n: int) -> None:
        self.done -= n
        self.uploader.progress.update(self.digest, self.done)


async def _part_url(
    uploader: BlobUploader, direct: DirectSession, number: int, length: int
) -> dict[str, Any]:
    registry = uploader.registry
    answer = await registry.retrying(
        "part URL",
        lambda: registry.call(
            "POST",
            direct.parts_url,
            scopes=uploader.scopes,
            headers={"Content-Type": "application/json"},
            body=_json({"parts": [{"number": number, "size": length}]}),
            ok=(200,),
        ),
    )
    parts = answer.json().get("parts", [])
    if not parts or parts[0].get("number") != number or not isinstance(parts[0].get("url"), str):
        raise RegistryError(
            answer.status, "the registry answered the parts request without a URL", str(answer.url)
        )
    part: dict[str, Any] = parts[0]
    return part


async def _send_part(
    uploader: BlobUploader,
    direct: DirectSession,
    number: int,
    span: tuple[int, int],
    source: BlobSource,
    progress: _Progress,
    fresh: bool,
) -> None:
    """One part to the store, retried (with a fresh URL after a refusal) until it is there."""
    registry = uploader.registry
    offset, length = span
    failures = 0
    async with uploader.part_slots:
        part = await _part_url(uploader, direct, number, length)
        while True:
            moved = 0

            def sent(n: int) -> None:
                nonlocal moved
                moved += n
                progress.sent(n)

            try:
                status, body = await registry.send_to_store(
                    "PUT",
                    URL(part["url"], encoded=True),
                    {str(k): str(v) for k, v in (part.get("headers") or {}).items()},
                    _body(source, offset, length),
                    sent,
                )
            except TRANSPORT_ERRORS as exc:
                status, body = 0, str(exc).encode()
                if fresh and failures == 0 and isinstance(exc, aiohttp.ClientConnectorError):
                    # The store cannot be reached from here at all: go through the registry.
                    raise DirectUnavailable(str(exc)) from exc
            if 200 <= status < 300:
                direct.held[number] = length
                return
            progress.undo(moved)
            failures += 1
            progress.result.faults += 1
            if failures > registry.options.retries:
                raise RegistryError(status, f"the object store refused part {number}: {body[:200]!r}", "")
            what = f"the store answered {status}" if status else "connection to the store lost"
            uploader.progress.note(progress.digest, f"part {number}: {what}; sending it again")
            await asyncio.sleep(
                backoff_delay(failures, registry.options.backoff_base, registry.options.backoff_max)
            )
            if status in (400, 403):
                part = await _part_url(uploader, direct, number, length)  # expired, or refused: a new URL


def _body(source: BlobSource, offset: int, length: int) -> Callable[[], AsyncIterator[bytes]]:
    return lambda: source.read(offset, length)


def _json(doc: Any) -> bytes:
    import json

    return json.dumps(doc, separators=(",", ":")).encode()
