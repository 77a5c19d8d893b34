"""Sixteen clients at once on the same blob or the same tag: every one succeeds, and the registry
ends in one consistent state (ARCHITECTURE.md invariants 1 and 2).

Each client is a thread with its own ``httpx.Client`` (its own connection); a barrier lines them
up so that the requests that publish land together.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.reliability.support import blob_files, logged_errors, run_fsck, server_errors
from tests.support.api_helpers import OCI_MANIFEST, digest_of, image_manifest
from tests.support.server import DockyardServer

StartServer = Callable[..., DockyardServer]
T = TypeVar("T")

CLIENTS = 16
BLOB_SIZE = 3 * 1024 * 1024 + 4321  # several body chunks, so the uploads overlap in time
CHUNK = 1024 * 1024
UPLOAD_PATHS = ["monolithic POST+PUT", "chunked PATCH+PUT", "streamed PATCH", "single POST", "mount"]

# What a client does before the barrier returns the request that publishes, to be sent after it.
Publish = Callable[[], httpx.Response]


def _client(server: DockyardServer) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=120.0, limits=httpx.Limits(max_connections=1))
    return client


def together(count: int, work: Callable[[int, threading.Barrier], T]) -> list[T]:
    """Run ``work(i, barrier)`` in ``count`` threads at once; re-raise the first failure."""
    barrier = threading.Barrier(count, timeout=120)
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(work, i, barrier) for i in range(count)]
        return [f.result() for f in futures]


def _location(r: httpx.Response) -> str:
    assert r.status_code == 202, (r.status_code, r.text)
    location: str = r.headers["location"]
    return location


def prepare_upload(client: httpx.Client, path: str, repo: str, data: bytes, source: str) -> Publish:
    """Everything a client sends before publishing ``data`` by ``path``; returns the publishing call."""
    digest = digest_of(data)
    uploads = f"/v2/{repo}/blobs/uploads/"
    if path == "single POST":
        return lambda: client.post(uploads, params={"digest": digest}, content=data)
    if path == "mount":
        return lambda: client.post(uploads, params={"mount": digest, "from": source})
    location = _location(client.post(uploads))
    if path == "monolithic POST+PUT":
        return lambda: client.put(location, params={"digest": digest}, content=data)
    if path == "chunked PATCH+PUT":
        for start in range(0, len(data) - CHUNK, CHUNK):
            chunk = data[start : start + CHUNK]
            r = client.patch(
                location, content=chunk, headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"}
            )
            location = _location(r)
        start = (len(data) - 1) // CHUNK * CHUNK
        last = {"Content-Range": f"{start}-{len(data) - 1}"}
        return lambda: client.put(location, params={"digest": digest}, content=data[start:], headers=last)
    assert path == "streamed PATCH"

    def stream_then_close() -> httpx.Response:
        # No Content-Range, no Content-Length: a chunked-encoded stream, as docker and containerd send.
        body = (data[i : i + 65536] for i in range(0, len(data), 65536))
        r = client.patch(location, content=body)
        return client.put(_location(r), params={"digest": digest})

    return stream_then_close


def _blob_layout(data_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Files under blobs/, uploads/ and tmp/."""
    return tuple(  # type: ignore[return-value]
        sorted(p for p in (data_dir / d).rglob("*") if p.is_file()) for d in ("blobs", "uploads", "tmp")
    )


def _assert_one_copy(server: DockyardServer, data: bytes, repos: set[str]) -> None:
    digest = digest_of(data)
    copies = blob_files(server.data_dir, digest)
    assert len(copies) == 1, f"{len(copies)} copies of {digest}: {copies}"
    assert copies[0] == server.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert hashlib.sha256(copies[0].read_bytes()).hexdigest() == digest[7:]
    blobs, staged, tmp = _blob_layout(server.data_dir)
    assert blobs == copies, f"blobs/ holds more than the one blob: {blobs}"
    assert staged == [] and tmp == [], f"staging left behind: {staged + tmp}"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for repo in sorted(repos):
            got = client.get(f"/v2/{repo}/blobs/{digest}")
            assert got.status_code == 200, (repo, got.status_code)
            assert got.content == data, f"{repo} serves other bytes for {digest}"
            assert got.headers["docker-content-digest"] == digest


def _assert_healthy(server: DockyardServer) -> None:
    """No unhandled error in the log; after a stop, fsck finds no damage."""
    server.stop()
    errors = server_errors(server.log(), ignore_startup_race=True)  # that race has its own test
    assert errors == [], "\n".join(errors[:20])
    code, report = run_fsck(server.data_dir)
    assert report["clean"] is True and code == 0, report


@pytest.fixture
def server(start_server: StartServer) -> Iterator[DockyardServer]:
    yield start_server(workers=2)


@pytest.mark.parametrize("path", UPLOAD_PATHS)
def test_sixteen_clients_push_the_same_blob_into_one_repository_at_once(
    server: DockyardServer, path: str
) -> None:
    data = os.urandom(BLOB_SIZE)
    digest = digest_of(data)
    repo, source = "race/blob", "race/source"
    if path == "mount":
        with _client(server) as c:
            assert (
                c.post(f"/v2/{source}/blobs/uploads/", params={"digest": digest}, content=data).status_code
                == 201
            )

    def push(i: int, barrier: threading.Barrier) -> httpx.Response:
        with _client(server) as client:
            publish = prepare_upload(client, path, repo, data, source)
            barrier.wait()
            r = publish()
            r.read()
            return r

    responses = together(CLIENTS, push)
    for r in responses:
        assert r.status_code == 201, (path, r.status_code, r.text)
        assert r.headers["docker-content-digest"] == digest
        assert r.headers["location"] == f"/v2/{repo}/blobs/{digest}"
    _assert_one_copy(server, data, {repo} | ({source} if path == "mount" else set()))
    _assert_healthy(server)


def test_sixteen_clients_push_the_same_blob_by_every_path_into_many_repositories(
    server: DockyardServer,
) -> None:
    data = os.urandom(BLOB_SIZE)
    digest = digest_of(data)
    source = "race/source"
    with _client(server) as c:
        assert (
            c.post(f"/v2/{source}/blobs/uploads/", params={"digest": digest}, content=data).status_code == 201
        )
    repos = [f"race/many-{i % 4}" for i in range(CLIENTS)]  # four repositories, four clients each

    def push(i: int, barrier: threading.Barrier) -> tuple[str, httpx.Response]:
        path = UPLOAD_PATHS[i % len(UPLOAD_PATHS)]
        with _client(server) as client:
            publish = prepare_upload(client, path, repos[i], data, source)
            barrier.wait()
            r = publish()
            r.read()
            return path, r

    for path, r in together(CLIENTS, push):
        assert r.status_code == 201, (path, r.status_code, r.text)
        assert r.headers["docker-content-digest"] == digest
    _assert_one_copy(server, data, set(repos) | {source})
    _assert_healthy(server)


# -- one tag, sixteen manifests ------------------------------------------------------------------------


def _manifests(client: httpx.Client, repo: str, count: int, seed: str) -> list[bytes]:
    """``count`` distinct image manifests over one shared layer, their blobs pushed."""
    layer = f"shared layer {seed}".encode() * 100
    assert (
        client.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(layer)}, content=layer
        ).status_code
        == 201
    )
    bodies = []
    for i in range(count):
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i, "seed": seed}).encode()
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(config)}, content=config)
        assert r.status_code == 201
        bodies.append(image_manifest(config, [layer]))
    return bodies


def _assert_tag_agrees(client: httpx.Client, repo: str, tag: str, candidates: set[str]) -> str:
    """The tag names exactly one of ``candidates``; tags/list, GET and HEAD by tag all agree."""
    listed = client.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert listed.count(tag) == 1, listed
    got = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == 200
    digest = got.headers["docker-content-digest"]
    assert digest in candidates, "the tag points at a manifest nobody pushed to it"
    assert digest_of(got.content) == digest, "the body is not the manifest the digest names"
    head = client.head(f"/v2/{repo}/manifests/{tag}")
    assert head.headers["docker-content-digest"] == digest
    assert int(head.headers["content-length"]) == len(got.content)
    return digest


@pytest.mark.parametrize("how", ["PUT by tag", "PUT by digest with ?tag="])
def test_sixteen_clients_move_one_tag_to_sixteen_manifests_at_once(server: DockyardServer, how: str) -> None:
    repo = "race/tag"
    with _client(server) as c:
        rounds = [_manifests(c, repo, CLIENTS, f"round {n}") for n in range(4)]
    for n, bodies in enumerate(rounds):
        tag = "latest" if n % 2 == 0 else f"moving-{n}"
        digests = {digest_of(b) for b in bodies}
        assert len(digests) == CLIENTS

        def move(
            i: int, barrier: threading.Barrier, bodies: list[bytes] = bodies, tag: str = tag
        ) -> httpx.Response:
            body = bodies[i]
            with _client(server) as client:
                headers = {"Content-Type": OCI_MANIFEST}
                barrier.wait()
                if how == "PUT by tag":
                    r = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers=headers)
                else:
                    url = f"/v2/{repo}/manifests/{digest_of(body)}"
                    r = client.put(url, params={"tag": tag}, content=body, headers=headers)
                return r

        responses = together(CLIENTS, move)
        for body, r in zip(bodies, responses, strict=True):
            assert r.status_code == 201, (r.status_code, r.text)
            assert r.headers["docker-content-digest"] == digest_of(body)
        with _client(server) as client:
            winner = _assert_tag_agrees(client, repo, tag, digests)
            for body in bodies:  # every manifest pushed is kept, tagged or not
                got = client.get(f"/v2/{repo}/manifests/{digest_of(body)}")
                assert got.status_code == 200 and got.content == body
            assert winner in digests
    _assert_healthy(server)


def test_sixteen_clients_push_the_same_manifest_and_tag_at_once(server: DockyardServer) -> None:
    repo = "race/same"
    with _client(server) as c:
        body = _manifests(c, repo, 1, "same")[0]

    def push(i: int, barrier: threading.Barrier) -> httpx.Response:
        with _client(server) as client:
            barrier.wait()
            r = client.put(f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
            return r

    for r in together(CLIENTS, push):
        assert r.status_code == 201, (r.status_code, r.text)
    with _client(server) as client:
        assert _assert_tag_agrees(client, repo, "v1", {digest_of(body)}) == digest_of(body)
    _assert_healthy(server)


def test_workers_starting_together_on_a_fresh_data_directory_all_come_up(start_server: StartServer) -> None:
    """N workers open one new SQLite file at once: none may die of "database is locked" on the way."""
    crashed: list[str] = []
    for attempt in range(4):
        server = start_server(workers=8)
        with _client(server) as client:
            assert client.get("/v2/").status_code == 200
        server.stop()
        crashed += [f"start {attempt}: {e}" for e in logged_errors(server.log())]
    assert crashed == [], "workers died at start:\n" + "\n".join(crashed)


# -- one session, sixteen writers ---------------------------------------------------------------------


def test_sixteen_clients_patch_the_same_chunk_into_one_session_at_once(server: DockyardServer) -> None:
    """ARCHITECTURE.md invariant 3: one writer at a time; the others get 416 with where it stands."""
    repo = "race/session"
    data = os.urandom(BLOB_SIZE)
    with _client(server) as c:
        location = _location(c.post(f"/v2/{repo}/blobs/uploads/"))

    def patch(i: int, barrier: threading.Barrier) -> httpx.Response:
        with _client(server) as client:
            barrier.wait()
            r = client.patch(location, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
            r.read()
            return r

    responses = together(CLIENTS, patch)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 1, f"not exactly one writer won: {statuses}"
    for r in responses:
        if r.status_code == 416:
            assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
            assert r.headers.get("location") == location, r.headers
            assert r.headers.get("range") in ("0--1", f"0-{len(data) - 1}"), r.headers
        else:
            assert r.status_code == 202, (r.status_code, r.text)
            assert r.headers["range"] == f"0-{len(data) - 1}"
    with _client(server) as client:
        assert client.get(location).headers["range"] == f"0-{len(data) - 1}"
        assert client.put(location, params={"digest": digest_of(data)}).status_code == 201
    _assert_one_copy(server, data, {repo})
    _assert_healthy(server)


def test_sixteen_clients_close_the_same_session_at_once(server: DockyardServer) -> None:
    repo = "race/close"
    data = os.urandom(BLOB_SIZE)
    digest = digest_of(data)
    with _client(server) as c:
        location = _location(c.post(f"/v2/{repo}/blobs/uploads/"))
        r = c.patch(location, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
        assert r.status_code == 202

    def close(i: int, barrier: threading.Barrier) -> httpx.Response:
        with _client(server) as client:
            barrier.wait()
            r = client.put(location, params={"digest": digest})
            r.read()
            return r

    responses = together(CLIENTS, close)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1, statuses
    for r in responses:
        if r.status_code == 201:
            assert r.headers["docker-content-digest"] == digest
        else:  # lost the race: the session is busy (416) or already closed (404)
            assert r.status_code in (404, 416), (r.status_code, r.text)
            code = r.json()["errors"][0]["code"]
            assert code == ("BLOB_UPLOAD_UNKNOWN" if r.status_code == 404 else "BLOB_UPLOAD_INVALID"), r.text
    _assert_one_copy(server, data, {repo})
    _assert_healthy(server)
