"""Pulling (spec: "Pull"): the API version check, manifests and blobs, whole and ranged."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api_helpers import (
    API_VERSION,
    assert_error,
    digest_of,
    open_session,
    push_blob,
    push_image,
)

BLOB = bytes(range(256)) * 4 + b"tail"  # 1028 bytes, every byte value, easy to slice


def test_api_version_check_returns_200_with_distribution_header(client: httpx.Client) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == API_VERSION


def test_api_version_header_is_on_error_responses_too(client: httpx.Client, repo: str) -> None:
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    assert r.headers["docker-distribution-api-version"] == API_VERSION


def test_api_version_header_is_on_every_kind_of_answer(client: httpx.Client, repo: str) -> None:
    """Answers built whole, sent with sendfile, ranged, refused by the router, and every step of
    a push carry it (Docker clients read it to know they speak to a v2 registry)."""
    image = push_image(client, repo, "v1")
    blob = image.layers[0]
    location = open_session(client, repo)
    answers = [
        client.get(f"/v2/{repo}/manifests/v1"),
        client.head(f"/v2/{repo}/manifests/{image.digest}"),
        client.get(f"/v2/{repo}/blobs/{digest_of(blob)}"),
        client.head(f"/v2/{repo}/blobs/{digest_of(blob)}"),
        client.get(f"/v2/{repo}/blobs/{digest_of(blob)}", headers={"Range": "bytes=0-0"}),
        client.get(f"/v2/{repo}/tags/list"),
        client.get(f"/v2/{repo}/referrers/{image.digest}"),
        client.post(f"/v2/{repo}/blobs/uploads/"),
        client.patch(location, content=b"abc", headers={"Content-Type": "application/octet-stream"}),
        client.get(location),
        client.put(location, params={"digest": digest_of(b"abc")}),
        client.get("/v2/_catalog"),
        client.get("/no/such/path"),
        client.request("PROPFIND", "/v2/"),
    ]
    for r in answers:
        assert r.headers.get("docker-distribution-api-version") == API_VERSION, (r.request, r.status_code)
    assert [r.status_code for r in answers] == [
        200,
        200,
        200,
        200,
        206,
        200,
        200,
        202,
        202,
        204,
        201,
        200,
        404,
        405,
    ]


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_get_manifest_returns_stored_bytes_type_length_and_digest(
    client: httpx.Client, repo: str, by: str
) -> None:
    image = push_image(client, repo, "v1")
    r = client.get(f"/v2/{repo}/manifests/{'v1' if by == 'tag' else image.digest}")
    assert r.status_code == 200
    assert r.content == image.manifest
    assert r.headers["content-type"] == image.media_type
    assert int(r.headers["content-length"]) == len(image.manifest)
    assert r.headers["docker-content-digest"] == image.digest


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_head_manifest_has_type_length_and_digest_and_no_body(
    client: httpx.Client, repo: str, by: str
) -> None:
    image = push_image(client, repo, "v1")
    r = client.head(f"/v2/{repo}/manifests/{'v1' if by == 'tag' else image.digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-type"] == image.media_type
    assert int(r.headers["content-length"]) == len(image.manifest)
    assert r.headers["docker-content-digest"] == image.digest


def test_get_unknown_manifest_returns_404_manifest_unknown(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    assert_error(client.get(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}/manifests/{digest_of(b'nope')}"), 404, "MANIFEST_UNKNOWN")
    assert client.head(f"/v2/{repo}/manifests/nope").status_code == 404


def test_get_blob_returns_bytes_length_and_digest(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, BLOB)
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == BLOB
    assert int(r.headers["content-length"]) == len(BLOB)
    assert r.headers["docker-content-digest"] == digest


def test_head_blob_has_content_length_and_no_body(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, BLOB)
    r = client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["content-length"]) == len(BLOB)
    assert r.headers["docker-content-digest"] == digest


def test_get_unknown_blob_returns_404_blob_unknown(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, b"something")
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(b'other')}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest_of(b'other')}").status_code == 404


def test_blob_is_not_visible_in_a_repository_that_does_not_link_it(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, BLOB + b"linked once")
    assert_error(client.get(f"/v2/{repo}-other/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_get_empty_blob_returns_200_and_no_bytes(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"")
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-99", 10, 99),
        ("bytes=1000-1027", 1000, 1027),
        ("bytes=100-", 100, 1027),
        ("bytes=-28", 1000, 1027),
        ("bytes=-5000", 0, 1027),  # a suffix longer than the blob is the whole blob
        ("bytes=1000-999999", 1000, 1027),  # an end beyond the size is clamped
    ],
)
def test_ranged_blob_get_returns_206_with_content_range(
    client: httpx.Client, repo: str, header: str, start: int, end: int
) -> None:
    digest = push_blob(client, repo, BLOB)
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert int(r.headers["content-length"]) == end - start + 1
    assert r.headers["docker-content-digest"] == digest
    assert r.content == BLOB[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=1028-", "bytes=5000-6000", "bytes=5-2", "bytes=-0"])
def test_unsatisfiable_blob_range_returns_416(client: httpx.Client, repo: str, header: str) -> None:
    digest = push_blob(client, repo, BLOB)
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert r.status_code == 416, r.text
    assert r.headers["content-range"] == f"bytes */{len(BLOB)}"
    assert "errors" in r.json()


def test_blob_range_on_empty_blob_returns_416(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"")
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert r.status_code == 416


def test_large_blob_round_trips_whole_and_ranged(client: httpx.Client, repo: str) -> None:
    data = bytes(range(251)) * 40_000  # ~10 MB, several read and sendfile chunks
    digest = push_blob(client, repo, data)
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert digest_of(r.content) == digest
    start, end = 3_000_001, 7_654_321
    r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={start}-{end}"})
    assert r.status_code == 206
    assert r.content == data[start : end + 1]
