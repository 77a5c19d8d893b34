"""Never acknowledge what is not stored, for manifests, tags, mounts, deletes and garbage
collection: a write that fails is answered with a 503, never a 2xx, and leaves the old state
(see ``test_fault_points_uploads.py`` for blob uploads).

Each test arms named fault points (``DOCKYARD_FAILPOINTS_RAISE``, see ``dockyard.failpoints``):
a storage point fails as a failing disk or object store does (``OSError(EIO)``), a database
point as the metadata store does when its database is away.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.faults.conftest import Start
from tests.faults.support import assert_unavailable
from tests.support.api_helpers import (
    OCI_MANIFEST,
    api_client,
    assert_error,
    digest_of,
    image_manifest,
    push_blob,
    put_manifest,
)


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60.0)


def _blob_absent(client: httpx.Client, repo: str, digest: str) -> None:
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("point", ["manifest.put*1", "manifest.record*1"])
def test_a_failing_manifest_push_leaves_no_manifest_and_no_tag(faulty: Start, point: str) -> None:
    server = faulty(point)
    repo = "faults/manifest"
    with _client(server.url) as client:
        config, layer = os.urandom(100), os.urandom(1000)
        push_blob(client, repo, config)
        push_blob(client, repo, layer)
        manifest = image_manifest(config, [layer])
        assert_unavailable(put_manifest(client, repo, "v1", manifest, OCI_MANIFEST))
        assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
        assert_error(client.get(f"/v2/{repo}/manifests/{digest_of(manifest)}"), 404, "MANIFEST_UNKNOWN")
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] in (None, [])
        assert put_manifest(client, repo, "v1", manifest, OCI_MANIFEST).status_code == 201
        assert client.get(f"/v2/{repo}/manifests/v1").content == manifest


def test_a_failing_tag_move_leaves_the_tag_where_it_was(faulty: Start) -> None:
    server = faulty("manifest.record>1*1")  # the second manifest push fails
    repo = "faults/tag"
    with _client(server.url) as client:
        config, a, b = os.urandom(100), os.urandom(1000), os.urandom(1000)
        for blob in (config, a, b):
            push_blob(client, repo, blob)
        first, second = image_manifest(config, [a]), image_manifest(config, [b])
        assert put_manifest(client, repo, "latest", first, OCI_MANIFEST).status_code == 201
        assert_unavailable(put_manifest(client, repo, "latest", second, OCI_MANIFEST))
        r = client.get(f"/v2/{repo}/manifests/latest")
        assert r.status_code == 200 and r.content == first
        assert_error(client.get(f"/v2/{repo}/manifests/{digest_of(second)}"), 404, "MANIFEST_UNKNOWN")


def test_a_failing_mount_links_nothing(faulty: Start) -> None:
    server = faulty("mount.link*1")
    data = os.urandom(10_000)
    with _client(server.url) as client:
        digest = push_blob(client, "faults/source", data)
        mount = {"mount": digest, "from": "faults/source"}
        assert_unavailable(client.post("/v2/faults/target/blobs/uploads/", params=mount))
        _blob_absent(client, "faults/target", digest)
        assert client.post("/v2/faults/target/blobs/uploads/", params=mount).status_code == 201
        assert client.get(f"/v2/faults/target/blobs/{digest}").content == data


def test_failing_deletes_delete_nothing(faulty: Start) -> None:
    server = faulty("delete.record*3")
    repo = "faults/delete"
    with _client(server.url) as client:
        config, layer = os.urandom(100), os.urandom(1000)
        push_blob(client, repo, config)
        layer_digest = push_blob(client, repo, layer)
        manifest = image_manifest(config, [layer])
        assert put_manifest(client, repo, "v1", manifest, OCI_MANIFEST).status_code == 201
        assert_unavailable(client.delete(f"/v2/{repo}/manifests/v1"))
        assert_unavailable(client.delete(f"/v2/{repo}/manifests/{digest_of(manifest)}"))
        assert_unavailable(client.delete(f"/v2/{repo}/blobs/{layer_digest}"))
        assert client.get(f"/v2/{repo}/manifests/v1").content == manifest
        assert client.get(f"/v2/{repo}/blobs/{layer_digest}").content == layer
        assert client.delete(f"/v2/{repo}/manifests/v1").status_code == 202
        assert_error(client.get(f"/v2/{repo}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_a_failing_collection_deletes_nothing_still_needed(faulty: Start) -> None:
    """The collector failing while it removes an unlinked blob (forgetting its record, then
    deleting its bytes): the run reports failure, every blob an image still needs is intact, and
    a later run (the fault gone) finishes the job."""
    server = faulty("")
    repo = "faults/gc"
    with api_client(server.url) as client:
        config, kept, dropped = os.urandom(100), os.urandom(5000), os.urandom(5000)
        push_blob(client, repo, config)
        kept_digest = push_blob(client, repo, kept)
        dropped_digest = push_blob(client, repo, dropped)
        assert (
            put_manifest(client, repo, "v1", image_manifest(config, [kept]), OCI_MANIFEST).status_code == 201
        )
        assert client.delete(f"/v2/{repo}/blobs/{dropped_digest}").status_code == 202

    def gc(points: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **server.env, "DOCKYARD_FAILPOINTS_RAISE": points}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dockyard",
                "gc",
                "--data-dir",
                str(server.data_dir),
                "--grace-seconds",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    for point in ("gc.forget", "gc.delete"):
        failed = gc(point)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        with _client(server.url) as client:
            assert client.get(f"/v2/{repo}/blobs/{kept_digest}").content == kept
    done = gc("")
    assert done.returncode == 0, done.stdout + done.stderr
    assert dropped_digest.split(":")[1] not in {p.name for p in (server.data_dir / "blobs").rglob("*")}
    with _client(server.url) as client:
        assert client.get(f"/v2/{repo}/blobs/{kept_digest}").content == kept
