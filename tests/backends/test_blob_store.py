"""The bytes port, the same tests for every storage adapter (filesystem and S3).

Staging is driven as the core drives it: a writer per PATCH, the session row persisted in
between. Each PATCH here gets a *new adapter object* and a session read back from a JSON round
trip of its row, as another node would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from dockyard.registry.digests import Digest
from dockyard.registry.ports import BlobStore, UploadSession

pytestmark = pytest.mark.anyio
KiB, MiB = 1 << 10, 1 << 20


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def row(session: UploadSession) -> UploadSession:
    """The session as the next request reads it from the metadata store."""
    return UploadSession(**json.loads(json.dumps(asdict(session))))


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([data async for data in stream])


async def patch(
    store: BlobStore, session: UploadSession, data: bytes, piece: int = 64 * KiB
) -> UploadSession:
    """One PATCH: open the staging at the recorded offset, stream ``data``, persist the row."""
    session = row(session)
    writer = await store.staging_open(session)
    for i in range(0, len(data), piece):
        await writer.write(data[i : i + piece])
    session.offset = await writer.close()
    return row(session)


def new_session() -> UploadSession:
    return UploadSession(id=f"{os.urandom(4).hex()}-0000-4000-8000-{os.urandom(6).hex()}", repository="t/r")


# -- content -----------------------------------------------------------------------------------


async def test_put_read_stat_and_delete(storage: Any) -> None:
    store = storage.new_store()
    data = os.urandom(3000)
    digest = digest_of(data)
    assert await store.stat(digest) is None
    await store.put(digest, data)
    await store.put(digest, data)  # idempotent
    other = storage.new_store()
    assert await other.stat(digest) == 3000
    assert await other.read_all(digest) == data
    assert await collect(other.read(digest)) == data
    assert await collect(other.read(digest, 100)) == data[100:]
    assert await collect(other.read(digest, 100, 50)) == data[100:150]
    assert await collect(other.read(digest, 2999, 1)) == data[2999:]
    assert await collect(other.read(digest, 0, 0)) == b""
    assert (await other.age(digest) or 0.0) >= 0.0
    assert [d async for d in other.iter_digests()] == [digest]
    if storage.name == "s3":
        assert other.local_path(digest) is None
    else:
        assert other.local_path(digest) is not None
    await other.delete(digest)
    assert await store.stat(digest) is None
    assert await store.age(digest) is None
    assert [d async for d in store.iter_digests()] == []


async def test_redirect_url_is_a_working_presigned_get_or_none(storage: Any) -> None:
    store = storage.new_store()
    data = os.urandom(10_000)
    digest = digest_of(data)
    await store.put(digest, data)
    url = await store.redirect_url(digest)
    if storage.name != "s3":
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == data
        ranged = await client.get(url, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert await storage.new_store(redirect=False).redirect_url(digest) is None


# -- staging -----------------------------------------------------------------------------------

CHUNKINGS = {
    "one streamed PATCH past two parts": [12 * MiB + 3],
    "chunks of 1 KiB": [KiB] * 16,
    "chunks of the minimum length": [5 * MiB, 5 * MiB, 100],
    "small chunks then large then small": [1000, 3 * MiB, 6 * MiB, 10, 2 * MiB + 1, 7],
    "an empty PATCH in between": [2 * MiB, 0, 4 * MiB],
}


@pytest.mark.parametrize("chunks", list(CHUNKINGS.values()), ids=list(CHUNKINGS))
async def test_chunks_appended_by_different_nodes_commit_to_the_same_bytes(
    storage: Any, chunks: list[int]
) -> None:
    data = os.urandom(sum(chunks))
    digest = digest_of(data)
    session = new_session()
    assert await storage.new_store().staging_size(session) == 0
    start = 0
    for size in chunks:
        session = await patch(storage.new_store(), session, data[start : start + size])
        start += size
        assert session.offset == start
        assert await storage.new_store().staging_size(row(session)) == start
    assert await collect(storage.new_store().staging_read(row(session))) == data
    await storage.new_store().staging_commit(row(session), digest)
    reader = storage.new_store()
    assert await reader.stat(digest) == len(data)
    assert await collect(reader.read(digest)) == data
    if len(data) > 5 * MiB + 4:  # across the first part boundary
        assert await collect(reader.read(digest, 5 * MiB - 3, 7)) == data[5 * MiB - 3 : 5 * MiB + 4]
    assert await storage.leftovers() == []
    # After the commit the staging area is gone: a retried commit sees the blob in place.
    assert await reader.staging_size(row(session)) in (None, 0)


async def test_commit_without_reading_first_as_with_a_live_hash(storage: Any) -> None:
    """The common push: the digest was hashed on the way in, so the commit is the first look."""
    data = os.urandom(11 * MiB + 5)
    session = await patch(storage.new_store(), new_session(), data)
    await storage.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(storage.new_store().read(digest_of(data))) == data
    assert await storage.leftovers() == []


async def test_empty_blob_commits_without_any_patch(storage: Any) -> None:
    session = new_session()
    assert await collect(storage.new_store().staging_read(session)) == b""
    await storage.new_store().staging_commit(session, digest_of(b""))
    assert await storage.new_store().stat(digest_of(b"")) == 0
    assert await collect(storage.new_store().read(digest_of(b""))) == b""


async def test_a_writer_killed_mid_patch_leaves_nothing_the_row_knows_about(storage: Any) -> None:
    """A node dies mid-PATCH: its bytes reached storage, the row never heard of them."""
    first = os.urandom(2 * MiB)
    session = await patch(storage.new_store(), new_session(), first)
    doomed = row(session)
    writer = await storage.new_store().staging_open(doomed)
    for _ in range(12):  # two parts' worth reach storage, then the node is gone
        await writer.write(os.urandom(MiB))
    rest = os.urandom(7 * MiB + 11)
    session = await patch(storage.new_store(), session, rest)  # another node, from the row
    data = first + rest
    assert session.offset == len(data)
    assert await collect(storage.new_store().staging_read(row(session))) == data
    await storage.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(storage.new_store().read(digest_of(data))) == data
    assert await storage.leftovers() == []


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 8, 13, 30])
async def test_a_patch_cancelled_mid_write_leaves_nothing_behind_the_row(storage: Any, steps: int) -> None:
    """Shutdown cancels a PATCH, over and over, while its bytes are being written: once the
    task is done, no write of it may still land (the next PATCH starts from the row), and no
    file stays open."""
    first = os.urandom(3 * MiB)
    session = await patch(storage.new_store(), new_session(), first)
    open_files = len(os.listdir("/proc/self/fd"))

    async def doomed() -> None:
        writer = await storage.new_store().staging_open(row(session))
        try:
            for _ in range(6):
                await writer.write(os.urandom(MiB))
        finally:
            await writer.close()

    rest = os.urandom(2 * MiB + 5)
    task = asyncio.create_task(doomed())
    for _ in range(steps):
        await asyncio.sleep(0)
    while not task.done():  # cancelled at every await, the close included
        task.cancel()
        await asyncio.sleep(0)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    session = await patch(storage.new_store(), session, rest)
    data = first + rest
    assert await collect(storage.new_store().staging_read(row(session))) == data
    await storage.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(storage.new_store().read(digest_of(data))) == data
    assert await storage.leftovers() == []
    if storage.name == "filesystem":
        assert len(os.listdir("/proc/self/fd")) == open_files


async def test_more_chunks_after_the_staged_bytes_were_read(storage: Any) -> None:
    """Reading the staging (an S3 seal) and then appending more still yields every byte."""
    data = os.urandom(14 * MiB)
    session = await patch(storage.new_store(), new_session(), data[: 6 * MiB + 1])
    assert await collect(storage.new_store().staging_read(row(session))) == data[: 6 * MiB + 1]
    session = await patch(storage.new_store(), session, data[6 * MiB + 1 : 8 * MiB])
    assert await collect(storage.new_store().staging_read(row(session))) == data[: 8 * MiB]
    session = await patch(storage.new_store(), session, data[8 * MiB :])
    await storage.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(storage.new_store().read(digest_of(data), 1)) == data[1:]
    assert await storage.leftovers() == []


async def test_staging_delete_leaves_nothing_behind(storage: Any) -> None:
    session = await patch(storage.new_store(), new_session(), os.urandom(6 * MiB))
    session = await patch(storage.new_store(), session, os.urandom(1000))
    other = await patch(storage.new_store(), new_session(), os.urandom(10))
    assert sorted(await storage.new_store().staging_ids()) == sorted([session.id, other.id])
    assert await storage.leftovers() != []
    await storage.new_store().staging_delete(row(session))
    await storage.new_store().staging_delete(row(other))
    assert await storage.leftovers() == []
    assert await storage.new_store().staging_ids() == []
    assert await storage.new_store().staging_size(row(session)) is None


async def test_staging_delete_without_a_row_still_removes_everything(storage: Any) -> None:
    """fsck removes orphan staging areas knowing only their id (no backend state)."""
    session = await patch(storage.new_store(), new_session(), os.urandom(5 * MiB + 3))
    await storage.new_store().staging_delete(UploadSession(id=session.id, repository=""))
    assert await storage.leftovers() == []


async def test_a_blob_past_several_copy_parts_and_with_a_tail(storage: Any) -> None:
    """Stands in for blobs past S3's 5 GiB copy limit: the commit copies in ranges (5 MiB here)."""
    data = os.urandom(17 * MiB + 12345)
    session = await patch(storage.new_store(), new_session(), data[: 17 * MiB])
    session = await patch(storage.new_store(), session, data[17 * MiB :])
    await storage.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(storage.new_store().read(digest_of(data))) == data
    assert await storage.leftovers() == []
