"""Pushing blobs, every path the spec offers (spec: "Pushing blobs", "Mounting a blob")."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api_helpers import (
    assert_error,
    digest_of,
    open_session,
    push_blob,
    range_end,
    session_offset,
)


def _assert_blob(client: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["docker-content-digest"] == digest


def _assert_created(r: httpx.Response, repo: str, digest: str) -> None:
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/{repo}/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest


def test_monolithic_post_then_put_with_body_returns_201(client: httpx.Client, repo: str) -> None:
    data = os.urandom(50_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    r = client.put(location, params={"digest": digest}, content=data)
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_single_post_with_digest_and_body_returns_201_with_location_and_digest(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(20_000)
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_single_post_without_trailing_slash_also_works(client: httpx.Client, repo: str) -> None:
    data = b"no trailing slash"
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads", params={"digest": digest}, content=data)
    _assert_created(r, repo, digest)


def test_chunked_upload_with_content_range_then_put_without_body(client: httpx.Client, repo: str) -> None:
    data = os.urandom(30_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    for start in range(0, len(data), 7_000):
        chunk = data[start : start + 7_000]
        r = client.patch(
            location,
            content=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["location"] == location
        assert r.headers["range"] == f"0-{start + len(chunk) - 1}"
    r = client.put(location, params={"digest": digest})
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_chunked_upload_finished_by_put_with_final_chunk(client: httpx.Client, repo: str) -> None:
    data = os.urandom(25_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    r = client.patch(location, content=data[:10_000], headers={"Content-Range": "0-9999"})
    assert r.status_code == 202
    r = client.patch(location, content=data[10_000:20_000], headers={"Content-Range": "10000-19999"})
    assert r.status_code == 202
    r = client.put(
        location,
        params={"digest": digest},
        content=data[20_000:],
        headers={"Content-Range": f"20000-{len(data) - 1}"},
    )
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_final_chunk_on_put_without_content_range_is_appended(client: httpx.Client, repo: str) -> None:
    data = os.urandom(9_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    assert (
        client.patch(location, content=data[:4_000], headers={"Content-Range": "0-3999"}).status_code == 202
    )
    r = client.put(location, params={"digest": digest}, content=data[4_000:])
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_streamed_patch_without_content_range(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = digest_of(data)
    location = open_session(client, repo)
    r = client.patch(location, content=data)
    assert r.status_code == 202, r.text
    assert r.headers["range"] == f"0-{len(data) - 1}"
    # a second stream appends where the first ended
    r = client.patch(location, content=b"more")
    assert r.status_code == 202
    assert range_end(r.headers["range"]) == len(data) + 3
    r = client.put(location, params={"digest": digest_of(data + b"more")})
    _assert_created(r, repo, digest_of(data + b"more"))
    _assert_blob(client, repo, digest_of(data + b"more"), data + b"more")
    assert digest != digest_of(data + b"more")


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_streamed_patch_with_transfer_encoding_chunked(client: httpx.Client, repo: str) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    digest = digest_of(data)
    location = open_session(client, repo)
    r = client.patch(location, content=_pieces(data, 100_000))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 202, r.text
    assert r.headers["range"] == f"0-{len(data) - 1}"
    r = client.put(location, params={"digest": digest})
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_put_with_transfer_encoding_chunked_body(client: httpx.Client, repo: str) -> None:
    data = os.urandom(500_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    r = client.put(location, params={"digest": digest}, content=_pieces(data, 65_536))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_empty_blob_via_post_then_put(client: httpx.Client, repo: str) -> None:
    digest = digest_of(b"")
    location = open_session(client, repo)
    r = client.put(location, params={"digest": digest})
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, b"")


def test_pushing_the_same_blob_twice_is_fine(client: httpx.Client, repo: str) -> None:
    data = b"twice" * 100
    push_blob(client, repo, data)
    digest = push_blob(client, repo, data)
    _assert_blob(client, repo, digest, data)


def test_cross_repo_mount_with_from_returns_201(client: httpx.Client, repo: str) -> None:
    data = os.urandom(4_000)
    digest = push_blob(client, f"{repo}/source", data)
    r = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"})
    _assert_created(r, f"{repo}/target", digest)
    _assert_blob(client, f"{repo}/target", digest, data)


def test_mount_of_unknown_blob_returns_202_with_a_usable_session(client: httpx.Client, repo: str) -> None:
    data = os.urandom(4_000)
    digest = digest_of(data)
    push_blob(client, f"{repo}/source", b"something else")
    r = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/source"})
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert r.headers["docker-upload-uuid"]
    assert session_offset(client, location) == 0
    r = client.put(location, params={"digest": digest}, content=data)
    _assert_created(r, f"{repo}/target", digest)
    _assert_blob(client, f"{repo}/target", digest, data)


def test_mount_from_a_repository_that_does_not_have_the_blob_returns_202(
    client: httpx.Client, repo: str
) -> None:
    digest = push_blob(client, f"{repo}/holder", os.urandom(100))
    r = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest, "from": f"{repo}/other"})
    assert r.status_code == 202, r.text
    assert_error(client.get(f"/v2/{repo}/target/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_mount_without_from_links_a_blob_that_exists_in_another_repository(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(3_000)
    digest = push_blob(client, f"{repo}/somewhere", data)
    r = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest})
    _assert_created(r, f"{repo}/target", digest)
    _assert_blob(client, f"{repo}/target", digest, data)


def test_sha512_session_with_sha512_digest_on_put(client: httpx.Client, repo: str) -> None:
    data = os.urandom(70_000)
    digest = digest_of(data, "sha512")
    location = open_session(client, repo, **{"digest-algorithm": "sha512"})
    assert (
        client.patch(location, content=data[:30_000], headers={"Content-Range": "0-29999"}).status_code == 202
    )
    r = client.put(location, params={"digest": digest}, content=data[30_000:])
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_sha512_digest_on_put_of_a_default_session(client: httpx.Client, repo: str) -> None:
    data = os.urandom(10_000)
    digest = digest_of(data, "sha512")
    location = open_session(client, repo)
    assert client.patch(location, content=data).status_code == 202
    r = client.put(location, params={"digest": digest})
    _assert_created(r, repo, digest)
    _assert_blob(client, repo, digest, data)


def test_single_post_with_sha512_digest(client: httpx.Client, repo: str) -> None:
    data = os.urandom(1_000)
    digest = push_blob(client, repo, data, "sha512")
    assert digest.startswith("sha512:")
    _assert_blob(client, repo, digest, data)


def test_digest_algorithm_md5_returns_400(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest-algorithm": "md5"})
    assert_error(r, 400, "DIGEST_INVALID")


def test_put_with_wrong_digest_returns_400_and_publishes_nothing(client: httpx.Client, repo: str) -> None:
    data = os.urandom(8_000)
    wrong = digest_of(data + b"!")
    location = open_session(client, repo)
    assert client.patch(location, content=data).status_code == 202
    assert_error(client.put(location, params={"digest": wrong}), 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404
    # The session is gone with its bytes: nothing of a bad upload is left behind.
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_monolithic_put_with_wrong_digest_returns_400_and_publishes_nothing(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(8_000)
    wrong = digest_of(b"not this")
    location = open_session(client, repo)
    assert_error(client.put(location, params={"digest": wrong}, content=data), 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404


def test_single_post_with_wrong_digest_returns_400_and_publishes_nothing(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(8_000)
    wrong = digest_of(b"not this either")
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=data)
    assert_error(r, 400, "DIGEST_INVALID")
    assert_error(client.get(f"/v2/{repo}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404


def test_put_without_digest_parameter_returns_400_digest_invalid(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    assert_error(client.put(location, content=b"abc"), 400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "A" * 64,  # uppercase hex
        "sha256:" + "a" * 63,  # wrong length
        "md5:" + "a" * 32,  # unregistered algorithm
    ],
)
def test_put_with_malformed_digest_returns_400_digest_invalid(
    client: httpx.Client, repo: str, bad: str
) -> None:
    location = open_session(client, repo)
    assert_error(client.put(location, params={"digest": bad}, content=b"abc"), 400, "DIGEST_INVALID")
