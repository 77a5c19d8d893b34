"""Errors: every one is the spec's JSON body with the spec's code; bad input never gets a 5xx."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_MANIFEST,
    SPEC_CODES,
    RawResponse,
    assert_error,
    assert_raw_error,
    digest_of,
    image_manifest,
    push_blob,
    push_image,
    raw_request,
)
from tests.support.server import DockyardServer

BAD_DIGESTS = [
    "sha256:" + "A" * 64,  # uppercase hex
    "sha256:" + "a" * 63,  # too short
    "sha256:" + "a" * 65,  # too long
    "sha512:" + "a" * 64,  # sha512 with a sha256-sized hex
    "md5:" + "a" * 32,  # unregistered algorithm
    "foo:" + "a" * 64,  # unregistered algorithm
    "sha256:" + "g" * 64,  # not hex
]

BAD_NAMES_RAW = [
    "../../etc",
    "..",
    "%2e%2e",
    "%2e%2e/%2e%2e/etc",
    "a/%2e%2e/b",
    "a/../b",
    "Uppercase",
    "test/UPPER",
    "a" * 300,
    "/".join(["a" * 60] * 5),  # 304 characters of valid components
    "a//b",
    "-leading",
    "trailing-",
    "a..b",
    "a%00b",
    "%C3%A9",
    "a%20b",
    "a%3Fb",
]


def _raw(server: DockyardServer, method: str, target: str, body: bytes = b"", **headers: str) -> RawResponse:
    return raw_request("127.0.0.1", server.port, method, target, headers=headers, body=body)


def test_error_bodies_are_spec_json_with_spec_codes(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    cases: list[tuple[httpx.Response, int, str]] = [
        (client.get(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN"),
        (client.get(f"/v2/{repo}/blobs/{digest_of(b'x')}"), 404, "BLOB_UNKNOWN"),
        (client.get(f"/v2/{repo}-none/tags/list"), 404, "NAME_UNKNOWN"),
        (
            client.get(f"/v2/{repo}/blobs/uploads/{'0' * 8}-0000-0000-0000-{'0' * 12}"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (client.get(f"/v2/{repo}/blobs/sha256:xyz"), 400, "DIGEST_INVALID"),
        (client.get("/v2/UPPER/tags/list"), 400, "NAME_INVALID"),
        (
            client.put(f"/v2/{repo}/manifests/v2", content=b"{", headers={"Content-Type": OCI_MANIFEST}),
            400,
            "MANIFEST_INVALID",
        ),
        (
            client.put(
                f"/v2/{repo}/manifests/v2",
                content=image_manifest(b"{}", [b"absent"]),
                headers={"Content-Type": OCI_MANIFEST},
            ),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        ),
    ]
    for response, status, code in cases:
        entry = assert_error(response, status, code)
        assert entry["code"] in SPEC_CODES
        assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert client.get(f"/v2/{repo}/manifests/v1").content == image.manifest


@pytest.mark.parametrize("name", BAD_NAMES_RAW)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "/tags/list"),
        ("GET", "/manifests/latest"),
        ("PUT", "/manifests/latest"),
        ("GET", "/blobs/" + "sha256:" + "a" * 64),
        ("POST", "/blobs/uploads/"),
        ("DELETE", "/manifests/latest"),
        ("GET", "/referrers/sha256:" + "a" * 64),
    ],
)
def test_bad_repository_names_return_400_name_invalid_or_404_never_500(
    registry_server: DockyardServer, name: str, method: str, suffix: str
) -> None:
    body = image_manifest(b"{}", []) if method == "PUT" else b""
    headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
    r = _raw(registry_server, method, f"/v2/{name}{suffix}", body, **headers)
    assert_raw_error(r, (400, 404))
    if r.status == 400:
        assert r.json()["errors"][0]["code"] == "NAME_INVALID", r.body


@pytest.mark.parametrize("name", ["Uppercase/repo", "a" * 300, "a..b", "-leading"])
def test_invalid_repository_name_returns_400_name_invalid(client: httpx.Client, name: str) -> None:
    assert_error(client.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(client.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")


def test_name_of_255_characters_is_accepted(client: httpx.Client) -> None:
    name = f"n{uuid.uuid4().hex}/" + "b" * (255 - 34)
    assert len(name) == 255
    digest = push_blob(client, name, b"long name")
    assert client.get(f"/v2/{name}/blobs/{digest}").content == b"long name"


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_invalid_digest_on_blob_endpoints_returns_400_digest_invalid(
    client: httpx.Client, repo: str, bad: str
) -> None:
    push_blob(client, repo, b"present")
    assert_error(client.get(f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/blobs/{bad}").status_code == 400
    assert_error(client.delete(f"/v2/{repo}/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert_error(
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": bad}, content=b"abc"),
        400,
        "DIGEST_INVALID",
    )
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": bad, "from": repo})
    assert_error(r, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("bad", [BAD_DIGESTS[0], BAD_DIGESTS[1], BAD_DIGESTS[4]])
def test_invalid_digest_on_manifest_endpoints_returns_400_digest_invalid(
    client: httpx.Client, repo: str, bad: str
) -> None:
    image = push_image(client, repo, "v1")
    assert_error(client.get(f"/v2/{repo}/manifests/{bad}"), 400, "DIGEST_INVALID")
    assert client.head(f"/v2/{repo}/manifests/{bad}").status_code == 400
    assert_error(client.delete(f"/v2/{repo}/manifests/{bad}"), 400, "DIGEST_INVALID")
    r = client.put(
        f"/v2/{repo}/manifests/{bad}", content=image.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_error(r, 400, "DIGEST_INVALID")


# Tags the spec's expression refuses: a leading dot or dash, a character outside it, 129 long.
NEVER_TAGS = [".INVALID_MANIFEST_NAME", "-dash", "bad!tag", "t" * 129, "%C3%A9"]


@pytest.mark.parametrize("reference", NEVER_TAGS)
def test_a_reference_that_cannot_be_a_tag_is_unknown_on_reads_and_deletes_and_invalid_on_a_push(
    client: httpx.Client, repo: str, reference: str
) -> None:
    # spec: "If the manifest is not found in the repository, the response code MUST be 404";
    # the release conformance suite GETs and HEADs `.INVALID_MANIFEST_NAME` and wants 404.
    image = push_image(client, repo, "v1")
    url = f"/v2/{repo}/manifests/{reference}"
    assert_error(client.get(url), 404, "MANIFEST_UNKNOWN")
    head = client.head(url)
    assert head.status_code == 404 and head.content == b""
    assert_error(client.delete(url), 404, "MANIFEST_UNKNOWN")
    assert_error(client.get(f"/v2/{repo}-none/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    put = client.put(url, content=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert_error(put, 400, "MANIFEST_INVALID")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]


@pytest.mark.parametrize("n", ["-1", "x", ""])
def test_bad_n_on_tags_list_returns_400_or_is_ignored_never_500(
    client: httpx.Client, repo: str, n: str
) -> None:
    push_image(client, repo, "v1")
    r = client.get(f"/v2/{repo}/tags/list?n={n}")
    if n == "":
        assert r.status_code == 200
        assert r.json()["tags"] == ["v1"]
    else:
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] in SPEC_CODES


def test_n_minus_one_on_tags_list_returns_400(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    r = client.get(f"/v2/{repo}/tags/list", params={"n": "-1"})
    assert r.status_code == 400
    assert r.json()["errors"]
    r = client.get("/v2/_catalog", params={"n": "-1"})
    assert r.status_code == 400
    assert r.json()["errors"]


def test_unknown_endpoint_returns_json_404(client: httpx.Client) -> None:
    r = client.get("/v2/some/repo/unknown-endpoint")
    assert r.status_code == 404
    assert r.json()["errors"]
    r = client.get("/not-v2")
    assert r.status_code == 404


def test_unsupported_method_returns_405_json(client: httpx.Client, repo: str) -> None:
    r = client.request("PATCH", f"/v2/{repo}/manifests/latest")
    assert_error(r, 405, "UNSUPPORTED")


def test_malformed_headers_on_uploads_never_get_500(registry_server: DockyardServer, repo: str) -> None:
    start = _raw(registry_server, "POST", f"/v2/{repo}/blobs/uploads/")
    assert start.status == 202
    location = start.headers["location"]
    for content_range in ("", "-", "0-", "-5", "bytes=0-1/2/3", "99999999999999999999-999999999999999999999"):
        r = _raw(registry_server, "PATCH", location, b"ab", **{"Content-Range": content_range})
        assert r.status < 500, (content_range, r.status, r.body)


def test_range_header_garbage_is_ignored_or_refused_never_500(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"0123456789")
    for header in (
        "bytes=",
        "bytes=a-b",
        "bytes=1-2,4-5",
        "items=0-1",
        "bytes=--1",
        "bytes=99999999999999999999-",
    ):
        r = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
        assert r.status_code in (200, 206, 416), (header, r.status_code)
        if r.status_code == 200:
            assert r.content == b"0123456789"
