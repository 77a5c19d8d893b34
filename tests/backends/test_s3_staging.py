"""How the S3 adapter lays a session out in the bucket: multipart parts, one tail, no ListParts.

The generic staging tests (``test_blob_store.py``) prove the bytes; these look at the objects.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from dockyard.storage.s3 import MIN_PART_SIZE, copy_ranges
from tests.backends.conftest import S3Harness
from tests.backends.test_blob_store import collect, digest_of, new_session, patch, row
from tests.support.services import SeaweedFS

pytestmark = pytest.mark.anyio
KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
async def s3(seaweedfs: SeaweedFS) -> AsyncIterator[S3Harness]:
    harness = S3Harness(seaweedfs)
    yield harness
    await harness.close()


def test_copy_ranges_keep_every_part_but_the_last_at_least_5_mib() -> None:
    assert copy_ranges(0, 8 * MiB) == []
    assert copy_ranges(3, 8 * MiB) == [(0, 2)]
    assert copy_ranges(16 * MiB, 8 * MiB) == [(0, 8 * MiB - 1), (8 * MiB, 16 * MiB - 1)]
    # a remainder under 5 MiB joins the range before it
    assert copy_ranges(17 * MiB, 8 * MiB) == [(0, 8 * MiB - 1), (8 * MiB, 17 * MiB - 1)]
    for size in (5 * MiB, 23 * MiB + 7, 40 * MiB):
        ranges = copy_ranges(size, 5 * MiB)
        assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
        assert all(b - a + 1 >= MIN_PART_SIZE for a, b in ranges)
        assert all(ranges[i][1] + 1 == ranges[i + 1][0] for i in range(len(ranges) - 1))


async def test_small_chunks_live_in_one_tail_object_and_no_multipart_upload(s3: S3Harness) -> None:
    session = new_session()
    for _ in range(5):
        session = await patch(s3.new_store(), session, os.urandom(100 * KiB))
    state = session.backend_state
    # the newest tail, and the one it superseded (deleted by the next writer, once this row is saved)
    assert await s3.leftovers() == [f"uploads/{session.id}/tail-4", f"uploads/{session.id}/tail-5"]
    assert state["stale"] == [f"{s3.prefix}uploads/{session.id}/tail-4"]
    assert state["upload"] is None and state["parts"] == [] and state["tail"] == 500 * KiB


async def test_chunks_of_the_minimum_length_map_one_to_one_onto_parts(s3: S3Harness) -> None:
    session = new_session()
    for _ in range(3):
        session = await patch(s3.new_store(part_size=8 * MiB), session, os.urandom(5 * MiB))
    state = session.backend_state
    assert [p[0] for p in state["parts"]] == [1, 2, 3]
    assert [p[2] for p in state["parts"]] == [5 * MiB] * 3
    assert all(isinstance(p[1], str) and p[1] for p in state["parts"])  # ETags
    assert state["tail"] == 0
    assert await s3.leftovers() == [
        f"uploads/{session.id}/data#upload",
        f"uploads/{session.id}/multipart",
    ]


async def test_a_streamed_patch_uploads_full_parts_and_keeps_the_rest_as_a_tail(s3: S3Harness) -> None:
    session = await patch(s3.new_store(part_size=5 * MiB), new_session(), os.urandom(13 * MiB), piece=MiB)
    assert [p[2] for p in session.backend_state["parts"]] == [5 * MiB, 5 * MiB]
    assert session.backend_state["tail"] == 3 * MiB
    # The next PATCH takes the tail back: the superseded tail object goes once the row is saved.
    session = await patch(s3.new_store(part_size=5 * MiB), session, os.urandom(2 * MiB + 1))
    assert [p[2] for p in session.backend_state["parts"]] == [5 * MiB] * 3
    assert session.backend_state["tail"] == 1
    session = await patch(s3.new_store(part_size=5 * MiB), session, b"x")
    tails = {k for k in await s3.leftovers() if "tail-" in k}
    current = f"uploads/{session.id}/tail-{session.backend_state['gen']}"
    assert tails == {current} | {k[len(s3.prefix) :] for k in session.backend_state["stale"]}
    assert len(tails) <= 2


async def test_a_long_part_list_is_compacted_server_side(s3: S3Harness) -> None:
    data = os.urandom(26 * MiB)
    session = new_session()
    for i in range(5):
        store = s3.new_store(copy_part_size=15 * MiB)
        store.max_parts = 3  # type: ignore[attr-defined]  # stands in for S3's 10,000
        session = await patch(store, session, data[i * 5 * MiB : (i + 1) * 5 * MiB])
        assert len(session.backend_state["parts"]) <= 3
    session = await patch(s3.new_store(), session, data[25 * MiB :])
    assert await collect(s3.new_store().staging_read(row(session))) == data
    await s3.new_store().staging_commit(row(session), digest_of(data))
    assert await collect(s3.new_store().read(digest_of(data))) == data
    assert await s3.leftovers() == []
