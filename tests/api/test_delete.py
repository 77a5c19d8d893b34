"""Content management: deleting manifests, tags and blobs (spec: "Content Management")."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.api_helpers import (
    api_client,
    assert_error,
    digest_of,
    push_blob,
    push_image,
)
from tests.support.server import DockyardServer


def test_delete_manifest_by_digest_returns_202_then_manifest_and_tags_are_gone(
    client: httpx.Client, repo: str
) -> None:
    image = push_image(client, repo, "v1")
    keep = push_image(client, repo, "keep", seed="keep")
    r = client.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 202, r.text
    assert_error(client.get(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert client.head(f"/v2/{repo}/manifests/{image.digest}").status_code == 404
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]
    assert client.get(f"/v2/{repo}/manifests/keep").content == keep.manifest


def test_delete_manifest_removes_it_from_referrers(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, "v1")
    referrer = push_image(
        client,
        repo,
        seed="ref",
        artifactType="application/vnd.example.sbom",
        subject={"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.manifest)},
    )
    listed = client.get(f"/v2/{repo}/referrers/{subject.digest}").json()["manifests"]
    assert [m["digest"] for m in listed] == [referrer.digest]
    assert client.delete(f"/v2/{repo}/manifests/{referrer.digest}").status_code == 202
    assert client.get(f"/v2/{repo}/referrers/{subject.digest}").json()["manifests"] == []


def test_delete_tag_returns_202_and_the_manifest_stays_by_digest(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    r = client.delete(f"/v2/{repo}/manifests/v1")
    assert r.status_code == 202, r.text
    assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    r = client.get(f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 200
    assert r.content == image.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


def test_delete_one_of_two_tags_keeps_the_other(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "a")
    assert (
        client.put(
            f"/v2/{repo}/manifests/b", content=image.manifest, headers={"Content-Type": image.media_type}
        ).status_code
        == 201
    )
    assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/b").content == image.manifest


def test_delete_unknown_manifest_returns_404(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    assert_error(client.delete(f"/v2/{repo}/manifests/{digest_of(b'nothing')}"), 404, "MANIFEST_UNKNOWN")
    assert_error(client.delete(f"/v2/{repo}/manifests/nothing"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_in_unknown_repository_returns_404(client: httpx.Client, repo: str) -> None:
    r = client.delete(f"/v2/{repo}/manifests/{digest_of(b'nothing')}")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")


def test_delete_blob_returns_202_then_get_returns_404(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"to be deleted")
    r = client.delete(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 202, r.text
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_error(client.delete(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_in_one_repository_keeps_it_in_another(client: httpx.Client, repo: str) -> None:
    data = b"shared between two repositories"
    digest = push_blob(client, f"{repo}/one", data)
    push_blob(client, f"{repo}/two", data)
    assert client.delete(f"/v2/{repo}/one/blobs/{digest}").status_code == 202
    assert client.get(f"/v2/{repo}/two/blobs/{digest}").content == data


def test_deleted_blob_can_be_pushed_again(client: httpx.Client, repo: str) -> None:
    data = b"back again"
    digest = push_blob(client, repo, data)
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    push_blob(client, repo, data)
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_deletes_disabled_return_405_unsupported(start_server: Callable[..., DockyardServer]) -> None:
    server = start_server(workers=1, env={"DOCKYARD_DELETE_ENABLED": "false"})
    repo = "nodelete/image"
    with api_client(server.url) as client:
        image = push_image(client, repo, "v1")
        blob = push_blob(client, repo, b"kept")
        assert_error(client.delete(f"/v2/{repo}/manifests/{image.digest}"), 405, "UNSUPPORTED")
        assert_error(client.delete(f"/v2/{repo}/manifests/v1"), 405, "UNSUPPORTED")
        assert_error(client.delete(f"/v2/{repo}/blobs/{blob}"), 405, "UNSUPPORTED")
        assert client.get(f"/v2/{repo}/manifests/v1").content == image.manifest
        assert client.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200
        assert client.get(f"/v2/{repo}/blobs/{blob}").content == b"kept"


def test_deleting_the_old_manifest_after_a_tag_move_keeps_the_tag(client: httpx.Client, repo: str) -> None:
    old = push_image(client, repo, "latest", seed="old")
    new = push_image(client, repo, "latest", seed="new")
    assert client.delete(f"/v2/{repo}/manifests/{old.digest}").status_code == 202
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.status_code == 200
    assert r.content == new.manifest


def test_deleted_manifest_can_be_pushed_again(client: httpx.Client, repo: str) -> None:
    image = push_image(client, repo, "v1")
    assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    r = client.put(
        f"/v2/{repo}/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/manifests/v1").content == image.manifest
    assert client.get(f"/v2/{repo}/manifests/{image.digest}").content == image.manifest
