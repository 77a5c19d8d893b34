"""The direct-upload exchange (docs/direct-uploads.md), step by step, across three nodes.

Parts go to SeaweedFS by plain HTTP ``PUT``s to the URLs the registry hands out; no dockyard
code touches them. Every node shares only the bucket and the database with the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.direct.support import (
    DIRECT,
    KIND,
    PARTS,
    MiB,
    ask_parts,
    blob_keys,
    open_direct,
    put_part,
    send_parts,
    split,
    staged_keys,
    status,
)
from tests.support.api_helpers import api_client, assert_error, digest_of
from tests.support.server import DockyardServer
from tests.support.services import SeaweedFS


def _pull(node: DockyardServer, repo: str, digest: str) -> bytes:
    with httpx.Client(base_url=node.url, timeout=60, follow_redirects=True) as c:
        r = c.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200, r.text
        return r.content


def test_each_step_on_another_node_publishes_the_right_bytes(
    cluster: list[DockyardServer], cluster_env: dict[str, str], seaweedfs: SeaweedFS
) -> None:
    n1, n2, n3 = cluster
    repo = "direct/spread"
    data = os.urandom(12 * MiB + 4321)
    digest = digest_of(data)
    pieces = split(data)
    with api_client(n1.url) as c1, api_client(n2.url) as c2, api_client(n3.url) as c3:
        opened = open_direct(c1, repo)
        location = opened.headers["location"]
        upload_id = opened.headers["docker-upload-uuid"]
        assert opened.headers["range"] == "0--1"
        assert opened.headers["oci-chunk-min-length"] == str(5 * MiB)
        urls = ask_parts(c2, location, {n: len(p) for n, p in pieces.items()})
        assert sorted(urls) == [1, 2, 3]
        for number in (3, 1, 2):  # any order: the store keeps them by number
            assert put_part(urls[number], pieces[number]).status_code == 200
        held = status(c3, location)
        assert held["state"] == "open"
        assert held["parts"] == [{"number": n, "size": len(p)} for n, p in pieces.items()]
        assert held["size"] == len(data)
        assert held["min_part_size"] == 5 * MiB
        assert c3.get(location).headers["range"] == f"0-{len(data) - 1}"
        r = c1.put(location, params={"digest": digest}, headers={"Dockyard-Upload-Size": str(len(data))})
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v2/{repo}/blobs/{digest}"
        assert r.headers["docker-content-digest"] == digest
        assert c2.head(f"/v2/{repo}/blobs/{digest}").headers["content-length"] == str(len(data))
        assert c3.get(location).status_code == 404  # the session is gone
    for node in cluster:
        assert _pull(node, repo, digest) == data
    assert staged_keys(seaweedfs, cluster_env, upload_id) == []


def test_without_the_header_or_with_an_unknown_kind_the_session_is_ordinary(
    cluster: list[DockyardServer],
) -> None:
    repo = "direct/ordinary"
    data = os.urandom(300_000)
    with api_client(cluster[0].url) as c:
        for headers in ({}, {DIRECT: "gcs-resumable"}):
            r = c.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
            assert r.status_code == 202
            assert DIRECT not in r.headers and PARTS not in r.headers
            location = r.headers["location"]
            assert c.get(location).status_code == 204  # the standard answer, no body
            assert c.patch(location, content=data).status_code == 202
            assert c.put(location, params={"digest": digest_of(data)}).status_code == 201
            r = c.post(location + "/parts", json={"parts": [{"number": 1, "size": 10}]})
            assert r.status_code == 404  # the session is gone; below, one still open
        location = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        r = c.post(location + "/parts", json={"parts": [{"number": 1, "size": 10}]})
        assert_error(r, 409, "BLOB_UPLOAD_INVALID")
        assert "PATCH" in r.json()["errors"][0]["message"]
        # A mount that cannot be made opens a session: direct, when asked for.
        missing = digest_of(b"nowhere to be found")
        r = c.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"mount": missing, "from": "direct/none"},
            headers={DIRECT: KIND},
        )
        assert r.status_code == 202 and r.headers[DIRECT] == KIND
        # Of several kinds named, the store's is chosen.
        r = c.post(f"/v2/{repo}/blobs/uploads/", headers={DIRECT: f"gcs-resumable, {KIND}"})
        assert r.headers[DIRECT] == KIND


def test_a_wrong_digest_leaves_nothing_in_the_bucket(
    cluster: list[DockyardServer], cluster_env: dict[str, str], seaweedfs: SeaweedFS
) -> None:
    repo = "direct/wrong"
    data = os.urandom(6 * MiB)
    wrong = digest_of(data + b"x")
    blobs_before = blob_keys(seaweedfs, cluster_env)
    with api_client(cluster[1].url) as c:
        opened = open_direct(c, repo)
        location, upload_id = opened.headers["location"], opened.headers["docker-upload-uuid"]
        send_parts(c, location, split(data))
        r = c.put(location, params={"digest": wrong})
        assert_error(r, 400, "DIGEST_INVALID")
        assert c.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
        assert c.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404
        assert c.get(location).status_code == 404
    assert staged_keys(seaweedfs, cluster_env, upload_id) == []
    assert blob_keys(seaweedfs, cluster_env) == blobs_before


def test_a_missing_part_is_refused_and_the_session_goes_on(cluster: list[DockyardServer]) -> None:
    repo = "direct/missing"
    data = os.urandom(11 * MiB)
    pieces = split(data)
    with api_client(cluster[2].url) as c:
        location = open_direct(c, repo).headers["location"]
        send_parts(c, location, {1: pieces[1], 3: pieces[3]})
        assert c.get(location).headers["range"] == f"0-{5 * MiB - 1}"  # parts 1..1 without a gap
        r = c.put(location, params={"digest": digest_of(data)})
        body = assert_error(r, 400, "BLOB_UPLOAD_INVALID")
        assert "part 2 is missing" in body["message"]
        assert body["detail"]["missing"] == 2
        assert status(c, location)["state"] == "open"
        # A part short of its size before the last: refused, whatever the digest would say.
        send_parts(c, location, {2: pieces[2][:-1]})
        r = c.put(location, params={"digest": digest_of(data)})
        assert "part 2 has" in assert_error(r, 400, "BLOB_UPLOAD_INVALID")["message"]
        # The last part short: the size the client declares says so (the session stays). A part
        # uploaded again replaces the earlier upload; the store's clock has whole seconds.
        time.sleep(1.1)
        send_parts(c, location, {2: pieces[2], 3: pieces[3][:-1]})
        r = c.put(
            location, params={"digest": digest_of(data)}, headers={"Dockyard-Upload-Size": str(len(data))}
        )
        body = assert_error(r, 400, "BLOB_UPLOAD_INVALID")
        assert body["detail"].get("size") == len(data) - 1, body
        time.sleep(1.1)
        send_parts(c, location, {3: pieces[3]})  # the part again, whole: it replaces the short one
        r = c.put(
            location, params={"digest": digest_of(data)}, headers={"Dockyard-Upload-Size": str(len(data))}
        )
        assert r.status_code == 201, r.text


def test_a_short_part_before_the_last_is_refused(cluster: list[DockyardServer]) -> None:
    repo = "direct/short"
    first, second = os.urandom(1 * MiB), os.urandom(5 * MiB)
    with api_client(cluster[0].url) as c:
        location = open_direct(c, repo).headers["location"]
        send_parts(c, location, {1: first, 2: second})
        r = c.put(location, params={"digest": digest_of(first + second)})
        body = assert_error(r, 400, "BLOB_UPLOAD_INVALID")
        assert body["message"] == f"part 1 has {MiB} bytes: every part but the last needs at least {5 * MiB}"
        whole = os.urandom(5 * MiB)
        time.sleep(1.1)  # SeaweedFS dates parts to the second: the new part 1 must be the newer one
        send_parts(c, location, {1: whole})
        r = c.put(location, params={"digest": digest_of(whole + second)})
        assert r.status_code == 201, r.text
        assert _pull(cluster[1], repo, digest_of(whole + second)) == whole + second


def test_a_url_covers_one_size_and_an_edited_part_number_does_not_get_past_the_registry(
    cluster: list[DockyardServer],
) -> None:
    repo = "direct/edited"
    data = os.urandom(7 * MiB)
    pieces = split(data)
    with api_client(cluster[1].url) as c:
        location = open_direct(c, repo).headers["location"]
        urls = ask_parts(c, location, {1: len(pieces[1]), 2: len(pieces[2])})
        # Another size than the one the URL was issued for: the store refuses it.
        assert httpx.put(urls[2]["url"], content=pieces[2] + b"more").status_code == 403
        # The part number edited (SeaweedFS accepts it, AWS would not): the registry's own
        # check at completion refuses a session with a gap.
        scheme, netloc, path, query, _ = urlsplit(urls[1]["url"])
        edited = urlencode([(k, "3" if k == "partNumber" else v) for k, v in parse_qsl(query)])
        r = httpx.put(
            urlunsplit((scheme, netloc, path, edited, "")), content=pieces[1], headers=urls[1]["headers"]
        )
        if r.status_code == 200:
            assert put_part(urls[2], pieces[2]).status_code == 200
            r = c.put(location, params={"digest": digest_of(data)})
            assert_error(r, 400, "BLOB_UPLOAD_INVALID")
        assert put_part(urls[1], pieces[1]).status_code == 200
        assert put_part(urls[2], pieces[2]).status_code == 200
        r = c.put(location, params={"digest": digest_of(data)})
        if r.status_code != 201:  # part 3 from the edited URL makes a different blob
            assert_error(r, 400, "DIGEST_INVALID")
        else:
            assert _pull(cluster[0], repo, digest_of(data)) == data


def test_bad_parts_requests_get_clear_errors(cluster: list[DockyardServer]) -> None:
    repo = "direct/requests"
    with api_client(cluster[2].url) as c:
        location = open_direct(c, repo).headers["location"]
        cases: list[tuple[object, str]] = [
            ({"parts": []}, "one part or more"),
            ({"parts": [{"number": 0, "size": 10}]}, "part numbers go from 1 to 10000"),
            ({"parts": [{"number": 10001, "size": 10}]}, "part numbers go from 1 to 10000"),
            ({"parts": [{"number": 1, "size": 0}]}, "part 1: a part holds 1 to"),
            ({"parts": [{"number": 1, "size": 5 * 1024**3 + 1}]}, "part 1: a part holds 1 to"),
            ({"parts": [{"number": 1, "size": 10}, {"number": 1, "size": 10}]}, "named twice"),
            ({"parts": [{"number": "1", "size": 10}]}, "integer number and size"),
            ([1, 2], "one part or more"),
            (
                {"parts": [{"number": n, "size": 10} for n in range(1, 1002)]},
                "at most 1000 parts per request",
            ),
        ]
        for body, message in cases:
            r = c.post(location + "/parts", json=body)
            error = assert_error(r, 400, "BLOB_UPLOAD_INVALID")
            assert message in error["message"], (body, error)
        r = c.post(location + "/parts", content=b"{not json")
        assert "must be JSON" in assert_error(r, 400, "BLOB_UPLOAD_INVALID")["message"]
        # PATCH and a PUT with a body do not mix with direct parts.
        r = c.patch(location, content=b"abc")
        assert "PATCH" in assert_error(r, 409, "BLOB_UPLOAD_INVALID")["message"]
        assert r.headers["location"] == location and r.headers["range"] == "0--1"
        r = c.put(location, params={"digest": digest_of(b"abc")}, content=b"abc")
        assert_error(r, 409, "BLOB_UPLOAD_INVALID")
        r = c.put(location, params={"digest": digest_of(b"")})
        assert "no parts" in assert_error(r, 400, "BLOB_UPLOAD_INVALID")["message"]
        r = c.post(
            location.replace(location.rsplit("/", 1)[1], "0" * 8 + "-0000-0000-0000-" + "0" * 12) + "/parts",
            json={"parts": [{"number": 1, "size": 10}]},
        )
        assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


def test_a_client_crash_midway_resumes_from_the_parts_the_store_holds(
    cluster: list[DockyardServer], cluster_env: dict[str, str], seaweedfs: SeaweedFS
) -> None:
    repo = "direct/resume"
    data = os.urandom(16 * MiB)
    pieces = split(data)
    n1, n2, n3 = cluster
    with api_client(n1.url) as c:
        opened = open_direct(c, repo)
        location, upload_id = opened.headers["location"], opened.headers["docker-upload-uuid"]
        urls = ask_parts(c, location, {n: len(p) for n, p in pieces.items()})
        assert put_part(urls[1], pieces[1]).status_code == 200
        assert put_part(urls[3], pieces[3]).status_code == 200
    # The client dies; the node it spoke to dies too. A new client asks another node.
    n1.kill()
    try:
        with api_client(n2.url) as c:
            held = status(c, location)
            assert held["parts"] == [{"number": 1, "size": 5 * MiB}, {"number": 3, "size": 5 * MiB}]
            lacking = {n: p for n, p in pieces.items() if n not in {p["number"] for p in held["parts"]}}
            assert sorted(lacking) == [2, 4]
            send_parts(c, location, lacking)
        n1.start()
        with api_client(n1.url) as c:
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
    finally:
        if n1.process is None or n1.process.poll() is not None:
            n1.start()
    assert _pull(n3, repo, digest_of(data)) == data
    assert staged_keys(seaweedfs, cluster_env, upload_id) == []


def test_cancel_aborts_the_multipart_upload(
    cluster: list[DockyardServer], cluster_env: dict[str, str], seaweedfs: SeaweedFS
) -> None:
    with api_client(cluster[0].url) as c:
        opened = open_direct(c, "direct/cancel")
        location, upload_id = opened.headers["location"], opened.headers["docker-upload-uuid"]
        send_parts(c, location, {1: os.urandom(5 * MiB)})
        assert any(k.endswith("#upload") for k in staged_keys(seaweedfs, cluster_env, upload_id))
        assert c.delete(location).status_code == 204
        assert c.get(location).status_code == 404
    assert staged_keys(seaweedfs, cluster_env, upload_id) == []


def test_an_expired_url_fails_and_new_ones_can_be_asked_for(node_with: Callable[..., DockyardServer]) -> None:
    node = node_with(DOCKYARD_S3__DIRECT_UPLOAD_URL_EXPIRY_SECONDS="1")
    data = os.urandom(1000)
    with api_client(node.url) as c:
        location = open_direct(c, "direct/expiry").headers["location"]
        urls = ask_parts(c, location, {1: len(data)})
        deadline = time.monotonic() + 60
        while True:  # the store's clock says when the URL has expired (one second, then some)
            time.sleep(1.5)
            r = put_part(urls[1], data)
            if r.status_code == 403 or time.monotonic() > deadline:
                break
        assert r.status_code == 403 and "expired" in r.text.lower()
        assert status(c, location)["parts"] in ([], [{"number": 1, "size": len(data)}])
    # New URLs, from a node whose URLs live long enough for this machine, however loaded.
    other = node_with(beside=node)
    with api_client(other.url) as c:
        urls = ask_parts(c, location, {1: len(data)})
        assert put_part(urls[1], data).status_code == 200
        assert c.put(location, params={"digest": digest_of(data)}).status_code == 201


def test_the_size_limit_applies_before_completion(
    node_with: Callable[..., DockyardServer], shared_backends: object
) -> None:
    node = node_with(DOCKYARD_S3__DIRECT_UPLOAD_MAX_BYTES=str(6 * MiB))
    data = os.urandom(10 * MiB)
    with api_client(node.url) as c:
        location = open_direct(c, "direct/limit").headers["location"]
        r = c.post(location + "/parts", json={"parts": [{"number": 1, "size": 7 * MiB}]})
        assert "a part holds 1 to" in assert_error(r, 400, "BLOB_UPLOAD_INVALID")["message"]
        send_parts(c, location, split(data))
        r = c.put(location, params={"digest": digest_of(data)})
        assert assert_error(r, 413, "SIZE_INVALID")["detail"] == {"size": 10 * MiB, "limit": 6 * MiB}
        assert c.head(f"/v2/direct/limit/blobs/{digest_of(data)}").status_code == 404


def test_abandoned_direct_sessions_expire_and_are_aborted(
    node_with: Callable[..., DockyardServer], seaweedfs: SeaweedFS
) -> None:
    # A TTL an order of magnitude above the gaps between this test's requests on a loaded machine.
    node = node_with(DOCKYARD_UPLOAD_TTL_SECONDS="20", DOCKYARD_UPLOAD_PURGE_INTERVAL_SECONDS="0.5")
    prefix = node.env["DOCKYARD_S3__PREFIX"]
    with api_client(node.url) as c:
        opened = open_direct(c, "direct/abandoned")
        location, upload_id = opened.headers["location"], opened.headers["docker-upload-uuid"]
        send_parts(c, location, {1: os.urandom(5 * MiB)})
        assert seaweedfs.keys(f"{prefix}uploads/{upload_id}/")
        deadline = time.monotonic() + 300
        while seaweedfs.keys(f"{prefix}uploads/{upload_id}/") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert seaweedfs.keys(f"{prefix}uploads/{upload_id}/") == []
        assert c.get(location).status_code == 404


def test_switched_off_or_on_a_filesystem_the_header_opens_an_ordinary_session(
    node_with: Callable[..., DockyardServer], tmp_path: object
) -> None:
    node = node_with(DOCKYARD_S3__DIRECT_UPLOADS="false")
    filesystem = DockyardServer(node.data_dir.parent / "fs-node", workers=1).start()
    try:
        for server in (node, filesystem):
            with api_client(server.url) as c:
                r = c.post("/v2/direct/off/blobs/uploads/", headers={DIRECT: KIND})
                assert r.status_code == 202 and DIRECT not in r.headers and PARTS not in r.headers
                location = r.headers["location"]
                assert c.patch(location, content=b"abc").status_code == 202
                assert c.put(location, params={"digest": digest_of(b"abc")}).status_code == 201
    finally:
        filesystem.stop()


def test_a_node_killed_right_after_joining_the_parts_leaves_a_session_another_node_closes(
    cluster: list[DockyardServer], cluster_env: dict[str, str], seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    repo = "direct/crash"
    data = os.urandom(9 * MiB)
    crashing = DockyardServer(
        tmp_path / "crashing", workers=1, env={**cluster_env, "DOCKYARD_FAILPOINTS": "direct.after_complete"}
    ).start()
    try:
        with api_client(cluster[0].url) as c, httpx.Client(base_url=crashing.url, timeout=60) as doomed:
            opened = open_direct(c, repo)
            location, upload_id = opened.headers["location"], opened.headers["docker-upload-uuid"]
            send_parts(c, location, split(data))
            with pytest.raises(httpx.TransportError):
                doomed.put(location, params={"digest": digest_of(data)})  # the node dies mid-PUT
            held = status(c, location)  # the multipart upload is completed; the row never said so
            assert held["state"] == "completed"
            assert c.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404  # not published
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
    finally:
        crashing.stop()
    assert _pull(cluster[2], repo, digest_of(data)) == data
    assert staged_keys(seaweedfs, cluster_env, upload_id) == []
