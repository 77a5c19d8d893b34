"""Any node serves any request: sessions, pushes, pulls and tags across three nodes.

The nodes share nothing but the bucket and the database (ARCHITECTURE.md invariant 5).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.interop.clients import Skopeo
from tests.support.api_helpers import (
    OCI_MANIFEST,
    api_client,
    digest_of,
    image_manifest,
    open_session,
    push_blob,
    session_offset,
)
from tests.support.oci_layout import build_image, layout_digests, resolve_tag
from tests.support.server import DockyardServer
from tests.support.services import unavailable
from tests.support.staging import staged_past

MiB = 1 << 20


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(location, content=data, headers={"Content-Range": f"{start}-{start + len(data) - 1}"})


def _pull_blob(node: DockyardServer, repo: str, digest: str) -> bytes:
    """GET a blob as clients do: the node redirects to the object store, the client follows."""
    with httpx.Client(base_url=node.url, timeout=60, follow_redirects=True) as client:
        r = client.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200, r.text
        return r.content


def test_a_chunked_upload_with_each_request_on_another_node(cluster: list[DockyardServer]) -> None:
    n1, n2, n3 = cluster
    repo = "spread/blob"
    data = os.urandom(12 * MiB + 321)
    digest = digest_of(data)
    with api_client(n1.url) as c1, api_client(n2.url) as c2, api_client(n3.url) as c3:
        r = c1.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        assert r.headers["oci-chunk-min-length"] == str(5 * MiB)
        location = r.headers["location"]
        assert _patch(c2, location, data[: 6 * MiB], 0).status_code == 202
        assert session_offset(c3, location) == 6 * MiB
        assert _patch(c1, location, data[6 * MiB : 6 * MiB + 1000], 6 * MiB).status_code == 202  # < minimum
        assert session_offset(c2, location) == 6 * MiB + 1000
        assert _patch(c3, location, data[6 * MiB + 1000 : 11 * MiB], 6 * MiB + 1000).status_code == 202
        assert session_offset(c1, location) == 11 * MiB
        r = c2.put(
            location,
            params={"digest": digest},
            content=data[11 * MiB :],
            headers={"Content-Range": f"{11 * MiB}-{len(data) - 1}"},
        )
        assert r.status_code == 201, r.text
        head = c3.head(f"/v2/{repo}/blobs/{digest}")  # HEAD answers on the node
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    for node in cluster:
        assert _pull_blob(node, repo, digest) == data


def test_a_push_on_node_1_is_pulled_from_node_3(cluster: list[DockyardServer]) -> None:
    n1, _, n3 = cluster
    repo = "team/app"
    config, layer = os.urandom(500), os.urandom(7 * MiB)
    with api_client(n1.url) as c1:
        for data in (config, layer):
            push_blob(c1, repo, data)
        manifest = image_manifest(config, [layer])
        r = c1.put(f"/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
    with api_client(n3.url) as c3:
        got = c3.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.content == manifest
        redirect = c3.get(f"/v2/{repo}/blobs/{digest_of(layer)}")
        assert redirect.status_code == 307
        assert redirect.headers["location"].startswith("http://127.0.0.1:")
        assert "X-Amz-Signature=" in redirect.headers["location"]
        assert redirect.headers["docker-content-digest"] == digest_of(layer)
        assert repo in c3.get("/v2/_catalog").json()["repositories"]
    assert _pull_blob(n3, repo, digest_of(layer)) == layer
    assert _pull_blob(n3, repo, digest_of(config)) == config


def test_a_tag_moved_on_node_2_is_read_on_node_1(cluster: list[DockyardServer]) -> None:
    n1, n2, n3 = cluster
    repo = "team/tags"
    config = os.urandom(100)
    with api_client(n1.url) as c1, api_client(n2.url) as c2, api_client(n3.url) as c3:
        push_blob(c1, repo, config)
        first, second = image_manifest(config, []), image_manifest(config, [], annotations={"v": "2"})
        assert c1.put(f"/v2/{repo}/manifests/latest", content=first, headers={"Content-Type": OCI_MANIFEST})
        assert c1.get(f"/v2/{repo}/manifests/latest").content == first  # node 1 has read (and cached) it
        r = c2.put(f"/v2/{repo}/manifests/latest", content=second, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
        assert c1.get(f"/v2/{repo}/manifests/latest").content == second
        assert c1.head(f"/v2/{repo}/manifests/latest").headers["docker-content-digest"] == digest_of(second)
        assert c3.delete(f"/v2/{repo}/manifests/{digest_of(second)}").status_code == 202
        assert c1.get(f"/v2/{repo}/manifests/latest").status_code == 404
        assert c2.get(f"/v2/{repo}/tags/list").json()["tags"] in ([], None)


def test_skopeo_pushes_through_one_node_and_pulls_through_another(
    cluster: list[DockyardServer], tmp_path: Path
) -> None:
    binary = shutil.which("skopeo")
    if binary is None:
        unavailable("skopeo is not installed (apt-get install -y skopeo)")
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    skopeo = Skopeo(binary=binary, auth_file=auth)
    source = tmp_path / "source"
    image = build_image(source, layers=3, layer_size=3 * MiB, seed=6)
    n1, n2, _ = cluster
    skopeo.copy(f"oci:{source}:latest", f"docker://{n1.host}/multi/skopeo:1.0")
    out = tmp_path / "out"
    skopeo.copy(f"docker://{n2.host}/multi/skopeo:1.0", f"oci:{out}:pulled")
    assert resolve_tag(out, "pulled").digest == image.digest
    assert layout_digests(out) == layout_digests(source)
    inspected = json.loads(
        skopeo.run("inspect", "--tls-verify=false", f"docker://{n2.host}/multi/skopeo:1.0").stdout
    )
    assert inspected["Digest"] == image.digest


def test_a_node_killed_mid_upload_and_the_session_finished_on_another(cluster: list[DockyardServer]) -> None:
    n1, n2, n3 = cluster
    repo = "crash/blob"
    data = os.urandom(24 * MiB)
    with api_client(n1.url) as c1:
        location = open_session(c1, repo)
        assert _patch(c1, location, data[: 6 * MiB], 0).status_code == 202
    upload_id = location.rsplit("/", 1)[1]
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {n1.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data) - 6 * MiB}\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", n1.port), timeout=10) as sock:
            sock.sendall(head + data[6 * MiB : 18 * MiB])
            deadline = time.monotonic() + 60
            while not staged_past(n1, upload_id, 6 * MiB):  # a part the row does not know reached S3
                assert time.monotonic() < deadline, "the streaming PATCH never reached the object store"
                time.sleep(0.05)
            n1.kill()  # kill -9 mid-PATCH: the row still says 6 MiB, the node's lock dies with it
        _finish_on_other_nodes(n2, n3, location, data)
    finally:
        n1.restart()  # the module's other tests keep their three nodes


def _finish_on_other_nodes(n2: DockyardServer, n3: DockyardServer, location: str, data: bytes) -> None:
    repo = location.split("/blobs/")[0].removeprefix("/v2/")
    digest = digest_of(data)
    with api_client(n2.url) as c2:
        offset = session_offset(c2, location)
        assert offset == 6 * MiB
        r = _patch(c2, location, data[offset : 20 * MiB], offset)
        assert r.status_code == 202, r.text  # another node takes the session at once
    with api_client(n3.url) as c3:
        r = c3.put(
            location,
            params={"digest": digest},
            content=data[20 * MiB :],
            headers={"Content-Range": f"{20 * MiB}-{len(data) - 1}"},
        )
        assert r.status_code == 201, r.text
    assert _pull_blob(n2, repo, digest) == data


@pytest.fixture(autouse=True)
def _services_or_skip(shared_backends: object) -> None:
    """Every test here needs SeaweedFS and PostgreSQL (skipped, or failed under CI, without)."""
