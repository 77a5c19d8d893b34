"""Content discovery: tags list, referrers and the ``_catalog`` extension (spec: "Content Discovery")."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest_of,
    dumps,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
)

TAGS = [
    "latest",
    "Latest",
    "v1.0",
    "v1.10",
    "v1.9",
    "V2",
    "_private",
    "0",
    "9",
    "10",
    "a-b",
    "a_b",
    "a.b",
    "ZZ",
]
_LINK = re.compile(r'^<([^>]+)>;\s*rel="next"$')


def _tag_all(client: httpx.Client, repo: str, tags: list[str]) -> None:
    """Push one manifest by digest with every tag at once."""
    config = b'{"tags": "many"}'
    push_blob(client, repo, config)
    body = image_manifest(config, [])
    r = client.put(
        f"/v2/{repo}/manifests/{digest_of(body)}",
        params=[("tag", t) for t in tags],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text


def _next(r: httpx.Response) -> str | None:
    link = r.headers.get("link")
    if link is None:
        return None
    m = _LINK.match(link)
    assert m, link
    return m.group(1)


def _follow(client: httpx.Client, url: str, key: str) -> tuple[list[str], int]:
    """Every item of a paginated list, following ``Link`` to the end; and the number of pages."""
    items: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        r = client.get(next_url)
        assert r.status_code == 200, r.text
        items += r.json()[key] or []
        pages += 1
        next_url = _next(r)
        assert pages < 1000
    return items, pages


# -- tags ----------------------------------------------------------------------------------------


def test_tags_list_is_sorted_byte_wise(client: httpx.Client, repo: str) -> None:
    _tag_all(client, repo, TAGS)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"name": repo, "tags": sorted(TAGS, key=lambda t: t.encode())}
    assert r.json()["tags"].index("Latest") < r.json()["tags"].index("latest")  # uppercase first
    assert "link" not in r.headers


@pytest.mark.parametrize("n", [1, 2, 3, 5, 13])
def test_tags_pagination_by_link_yields_the_full_list(client: httpx.Client, repo: str, n: int) -> None:
    _tag_all(client, repo, TAGS)
    full = client.get(f"/v2/{repo}/tags/list").json()["tags"]
    r = client.get(f"/v2/{repo}/tags/list", params={"n": n})
    assert r.json()["tags"] == full[:n]
    assert _next(r) is not None
    items, pages = _follow(client, f"/v2/{repo}/tags/list?n={n}", "tags")
    assert items == full
    assert pages == -(-len(full) // n)


def test_tags_page_with_n_at_least_the_count_has_no_link(client: httpx.Client, repo: str) -> None:
    _tag_all(client, repo, TAGS)
    r = client.get(f"/v2/{repo}/tags/list", params={"n": len(TAGS)})
    assert len(r.json()["tags"]) == len(TAGS)
    assert "link" not in r.headers


def test_tags_last_starts_after_the_given_tag(client: httpx.Client, repo: str) -> None:
    _tag_all(client, repo, TAGS)
    full = sorted(TAGS, key=lambda t: t.encode())
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 3, "last": "Latest"})
    i = full.index("Latest")
    assert r.json()["tags"] == full[i + 1 : i + 4]
    r = client.get(f"/v2/{repo}/tags/list", params={"last": "v1.9"})
    assert r.json()["tags"] == full[full.index("v1.9") + 1 :]


def test_tags_n_zero_returns_empty_list_and_no_link(client: httpx.Client, repo: str) -> None:
    _tag_all(client, repo, TAGS)
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert r.status_code == 200
    assert r.json()["tags"] == []
    assert "link" not in r.headers


def test_tags_list_of_unknown_repository_returns_404_name_unknown(client: httpx.Client, repo: str) -> None:
    assert_error(client.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN")


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999999999999999"])
def test_tags_invalid_n_returns_400(client: httpx.Client, repo: str, n: str) -> None:
    _tag_all(client, repo, ["x"])
    r = client.get(f"/v2/{repo}/tags/list", params={"n": n})
    assert r.status_code == 400, r.text
    assert r.json()["errors"]


# -- referrers -----------------------------------------------------------------------------------


def _referrer(
    client: httpx.Client,
    repo: str,
    subject: bytes,
    *,
    artifact_type: str | None,
    config_type: str = OCI_EMPTY,
    annotations: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    config = b"{}" if config_type == OCI_EMPTY else b'{"config": "' + config_type.encode() + b'"}'
    push_blob(client, repo, config)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
        "layers": [],
        "subject": descriptor(OCI_MANIFEST, subject),
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if annotations is not None:
        doc["annotations"] = annotations
    body = dumps(doc)
    r = put_manifest(client, repo, digest_of(body), body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    return body, digest_of(body)


def test_referrers_lists_manifests_with_artifact_type_and_annotations(
    client: httpx.Client, repo: str
) -> None:
    subject = push_image(client, repo, "v1")
    sbom, sbom_digest = _referrer(
        client,
        repo,
        subject.manifest,
        artifact_type="application/vnd.example.sbom",
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "k": "v"},
    )
    sig, sig_digest = _referrer(
        client, repo, subject.manifest, artifact_type=None, config_type="application/vnd.example.sig.config"
    )
    push_image(client, repo, "unrelated", seed="unrelated")
    r = client.get(f"/v2/{repo}/referrers/{subject.digest}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {sbom_digest, sig_digest}
    assert by_digest[sbom_digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom_digest,
        "size": len(sbom),
        "artifactType": "application/vnd.example.sbom",
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "k": "v"},
    }
    assert by_digest[sig_digest]["artifactType"] == "application/vnd.example.sig.config"
    assert by_digest[sig_digest]["size"] == len(sig)
    assert "oci-filters-applied" not in r.headers


def test_referrers_artifact_type_filter_applies_and_says_so(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    _, sbom = _referrer(client, repo, subject.manifest, artifact_type="application/vnd.example.sbom")
    _referrer(client, repo, subject.manifest, artifact_type="application/vnd.example.sig")
    r = client.get(
        f"/v2/{repo}/referrers/{subject.digest}", params={"artifactType": "application/vnd.example.sbom"}
    )
    assert r.status_code == 200
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [sbom]
    r = client.get(f"/v2/{repo}/referrers/{subject.digest}", params={"artifactType": "application/none"})
    assert r.json()["manifests"] == []
    assert r.headers["oci-filters-applied"] == "artifactType"


def test_referrers_include_an_index_with_a_subject(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    child = push_image(client, repo, seed="child")
    body = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/vnd.example.bundle",
            "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
            "subject": descriptor(OCI_MANIFEST, subject.manifest),
        }
    )
    r = put_manifest(client, repo, digest_of(body), body, OCI_INDEX)
    assert r.status_code == 201, r.text
    manifests = client.get(f"/v2/{repo}/referrers/{subject.digest}").json()["manifests"]
    assert manifests == [
        {
            "mediaType": OCI_INDEX,
            "digest": digest_of(body),
            "size": len(body),
            "artifactType": "application/vnd.example.bundle",
        }
    ]


def test_referrers_pushed_before_their_subject_are_listed(client: httpx.Client, repo: str) -> None:
    config = b'{"later": "subject"}'
    push_blob(client, repo, config)
    subject = image_manifest(config, [])
    _, ref = _referrer(client, repo, subject, artifact_type="application/vnd.example.early")
    assert put_manifest(client, repo, "v1", subject, OCI_MANIFEST).status_code == 201
    r = client.get(f"/v2/{repo}/referrers/{digest_of(subject)}")
    assert [m["digest"] for m in r.json()["manifests"]] == [ref]


def test_referrers_of_unknown_subject_returns_200_with_empty_manifests(
    client: httpx.Client, repo: str
) -> None:
    push_image(client, repo, "v1")
    r = client.get(f"/v2/{repo}/referrers/{digest_of(b'no such subject')}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == OCI_INDEX
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_are_scoped_to_the_repository(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    _referrer(client, repo, subject.manifest, artifact_type="application/vnd.example.sbom")
    r = client.get(f"/v2/{repo}-other/referrers/{subject.digest}")
    assert r.status_code in (200, 404)
    if r.status_code == 200:
        assert r.json()["manifests"] == []


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:abc", "nope", "md5:" + "a" * 32])
def test_referrers_with_invalid_digest_returns_400(client: httpx.Client, repo: str, bad: str) -> None:
    push_image(client, repo, "v1")
    assert_error(client.get(f"/v2/{repo}/referrers/{bad}"), 400, "DIGEST_INVALID")


# -- catalog -------------------------------------------------------------------------------------


def test_catalog_pagination_with_n_last_and_link(client: httpx.Client) -> None:
    prefix = f"catalog-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}/{x}" for x in ("c", "a", "b", "a/deeper")]
    for name in names:
        push_blob(client, name, name.encode())
    mine = sorted(names, key=lambda s: s.encode())
    r = client.get("/v2/_catalog", params={"n": 2, "last": prefix})
    assert r.status_code == 200
    assert r.json()["repositories"] == mine[:2]
    next_url = _next(r)
    assert next_url is not None
    r = client.get(next_url)
    assert r.json()["repositories"] == mine[2:4]
    # the whole catalog, page by page, is sorted, has no duplicates and holds every repository
    items, _ = _follow(client, "/v2/_catalog?n=50", "repositories")
    assert items == sorted(set(items), key=lambda s: s.encode())
    assert set(mine) <= set(items)
    whole = client.get("/v2/_catalog").json()["repositories"]
    assert set(mine) <= set(whole)


def test_catalog_n_zero_returns_empty_and_no_link(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, b"catalog")
    r = client.get("/v2/_catalog", params={"n": 0})
    assert r.status_code == 200
    assert r.json()["repositories"] == []
    assert "link" not in r.headers
