"""Never acknowledge what is not stored: a write that fails at any point of any write path is
answered with a 503 (or, for a full disk, a 507), never a 2xx, and leaves nothing half-visible;
the same request, tried again once the fault is gone, succeeds. Here: blob uploads (manifests,
tags, mounts, deletes and collection: ``test_fault_points_records.py``).

Each test arms named fault points (``DOCKYARD_FAILPOINTS_RAISE``, see ``dockyard.failpoints``):
a storage point fails as a failing disk or object store does (``OSError(EIO)``), a database
point as the metadata store does when its database is away.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.faults.conftest import Start
from tests.faults.support import assert_unavailable
from tests.support.api_helpers import (
    assert_error,
    digest_of,
    open_session,
    session_offset,
)

MiB = 1 << 20


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60.0)


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(location, content=data, headers={"Content-Range": f"{start}-{start + len(data) - 1}"})


def _blob_absent(client: httpx.Client, repo: str, digest: str) -> None:
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize(
    ("point", "backend"),
    [
        ("staging.close*1", "filesystem"),
        ("staging.close*1", "s3"),
        ("patch.write*1", "filesystem"),
        ("patch.save*1", "filesystem"),
        ("patch.save*1", "s3"),
    ],
)
def test_a_patch_whose_bytes_are_not_stored_is_never_202(faulty: Start, point: str, backend: str) -> None:
    """The first PATCH of a fresh session, failing at its last flush, its write or the save of
    its offset: 503 (never a 202, whatever its Range), the session at what is really stored (a
    prefix of the chunk; the digest at the end proves it), and continuing from there ends in a
    201 with the right digest."""
    server = faulty(point, backend)
    repo = f"faults/patch-{backend}"
    data = os.urandom(MiB + 1000)
    with _client(server.url) as client:
        location = open_session(client, repo)
        assert_unavailable(_patch(client, location, data, 0))
        offset = session_offset(client, location)
        assert 0 <= offset < len(data)
        r = _patch(client, location, data[offset:], offset)
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(data) - 1}"
        r = client.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data


def test_a_patch_whose_last_flush_meets_a_full_disk_is_507(faulty: Start) -> None:
    server = faulty("staging.close=enospc*1")
    data = os.urandom(4096)
    with _client(server.url) as client:
        location = open_session(client, "faults/full")
        assert_error(_patch(client, location, data, 0), 507, "BLOB_UPLOAD_INVALID")
        assert session_offset(client, location) == 0


def test_a_failing_second_chunk_keeps_the_first(faulty: Start, backend: str) -> None:
    """A session holding a chunk, whose next chunk fails at its last flush: the session still
    holds exactly the first chunk, and continues from there."""
    server = faulty("staging.close>1*1", backend)
    repo = f"faults/second-{backend}"
    first, second = os.urandom(5 * MiB), os.urandom(1000)
    with _client(server.url) as client:
        location = open_session(client, repo)
        assert _patch(client, location, first, 0).status_code == 202
        assert_unavailable(_patch(client, location, second, len(first)))
        assert session_offset(client, location) == len(first)  # the chunk is smaller than a batch
        assert _patch(client, location, second, len(first)).status_code == 202
        digest = digest_of(first + second)
        assert client.put(location, params={"digest": digest}).status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == first + second


@pytest.mark.parametrize("point", ["commit.move*1", "commit.link*1"])
def test_a_failing_commit_publishes_nothing_and_can_be_retried(
    faulty: Start, backend: str, point: str
) -> None:
    server = faulty(point, backend)
    repo = f"faults/commit-{backend}"
    data = os.urandom(2 * MiB + 7)
    digest = digest_of(data)
    with _client(server.url) as client:
        location = open_session(client, repo)
        assert _patch(client, location, data, 0).status_code == 202
        assert_unavailable(client.put(location, params={"digest": digest}))
        _blob_absent(client, repo, digest)
        r = client.put(location, params={"digest": digest})
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_a_failing_single_post_leaves_no_blob_and_no_session(faulty: Start) -> None:
    server = faulty("commit.link")
    repo = "faults/post"
    data = os.urandom(300_000)
    digest = digest_of(data)
    with _client(server.url) as client:
        assert_unavailable(client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data))
        _blob_absent(client, repo, digest)
        # The repository never came to exist: nothing of the failed push is visible.
        assert_error(client.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN")


def test_a_failing_session_open_opens_nothing(faulty: Start) -> None:
    server = faulty("upload.create*1")
    with _client(server.url) as client:
        assert_unavailable(client.post("/v2/faults/open/blobs/uploads/"))
        assert open_session(client, "faults/open")
