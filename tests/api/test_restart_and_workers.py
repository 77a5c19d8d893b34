"""Sessions are state, not memory (ARCHITECTURE.md invariant 3): restarts, workers, expiry."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.api_helpers import (
    OCI_MANIFEST,
    api_client,
    assert_error,
    digest_of,
    open_session,
    push_blob,
    push_image,
    session_offset,
)
from tests.support.clock import MovableClock
from tests.support.server import DockyardServer
from tests.support.staging import staged_past, staging_exists

StartServer = Callable[..., DockyardServer]


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(location, content=data, headers={"Content-Range": f"{start}-{start + len(data) - 1}"})


def test_session_survives_kill_9_and_restart_on_the_same_data_dir(start_server: StartServer) -> None:
    server = start_server(workers=2)
    repo = "restart/blob"
    data = os.urandom(2_500_000)
    digest = digest_of(data)
    with api_client(server.url) as client:
        location = open_session(client, repo)
        assert _patch(client, location, data[:1_000_000], 0).status_code == 202
        assert _patch(client, location, data[1_000_000:1_800_000], 1_000_000).status_code == 202
    server.kill()
    server.restart()
    with api_client(server.url) as client:
        assert session_offset(client, location) == 1_800_000
        r = client.put(
            location,
            params={"digest": digest},
            content=data[1_800_000:],
            headers={"Content-Range": f"1800000-{len(data) - 1}"},
        )
        assert r.status_code == 201, r.text
        got = client.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status_code == 200
        assert digest_of(got.content) == digest


def test_published_content_survives_kill_9(start_server: StartServer) -> None:
    server = start_server(workers=1)
    repo = "restart/published"
    with api_client(server.url) as client:
        digest = digest_of(b"durable")
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=b"durable")
        assert r.status_code == 201
    server.restart()
    with api_client(server.url) as client:
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == b"durable"


def test_session_requests_over_fresh_connections_work_on_any_of_two_workers(
    start_server: StartServer,
) -> None:
    server = start_server(workers=2)
    repo = "workers/chunks"
    data = os.urandom(16 * 4_096)
    digest = digest_of(data)
    with api_client(server.url) as client:
        location = open_session(client, repo)
    for i in range(16):
        # A new client per request: a new connection each time, so either worker may answer.
        with api_client(server.url) as client:
            start = i * 4_096
            r = _patch(client, location, data[start : start + 4_096], start)
            assert r.status_code == 202, (i, r.text)
            assert r.headers["location"] == location
        with api_client(server.url) as client:
            assert session_offset(client, location) == start + 4_096
    with api_client(server.url) as client:
        r = client.put(location, params={"digest": digest})
        assert r.status_code == 201, r.text
    for _ in range(6):
        with api_client(server.url) as client:
            got = client.get(f"/v2/{repo}/blobs/{digest}")
            assert got.status_code == 200
            assert digest_of(got.content) == digest


def test_idle_upload_session_expires_and_its_staging_is_removed(
    start_server: StartServer, clock: MovableClock
) -> None:
    server = start_server(
        workers=1,
        env={
            "DOCKYARD_UPLOAD_TTL_SECONDS": "600",
            "DOCKYARD_UPLOAD_PURGE_INTERVAL_SECONDS": "0.5",
            **clock.env,
        },
    )
    repo = "expiry/blob"
    with api_client(server.url) as client:
        location = open_session(client, repo)
        uuid = location.rsplit("/", 1)[1]
        assert _patch(client, location, b"staged bytes", 0).status_code == 202
        assert staging_exists(server, uuid)
        clock.advance(3600)  # idle for six TTLs
        assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        deadline = time.monotonic() + 60
        while staging_exists(server, uuid):  # the next purge pass removes the bytes
            assert time.monotonic() < deadline, "the expired session's staging was never removed"
            time.sleep(0.2)
        assert_error(_patch(client, location, b"more", 12), 404, "BLOB_UPLOAD_UNKNOWN")


def test_active_upload_session_does_not_expire_while_chunks_keep_coming(
    start_server: StartServer, clock: MovableClock
) -> None:
    server = start_server(
        workers=1,
        env={
            "DOCKYARD_UPLOAD_TTL_SECONDS": "600",
            "DOCKYARD_UPLOAD_PURGE_INTERVAL_SECONDS": "0.2",
            **clock.env,
        },
    )
    repo = "expiry/active"
    data = os.urandom(6 * 100)
    with api_client(server.url) as client:
        location = open_session(client, repo)
        for i in range(6):  # 6 chunks 400 s apart: four TTLs in total, never idle for one
            assert _patch(client, location, data[i * 100 : (i + 1) * 100], i * 100).status_code == 202
            clock.advance(400)
            time.sleep(0.3)  # purge passes run in between
        r = client.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text


def test_kill_9_during_a_streaming_patch_keeps_the_last_persisted_offset(start_server: StartServer) -> None:
    server = start_server(workers=1)
    repo = "restart/midstream"
    data = os.urandom(12_000_000)
    digest = digest_of(data)
    with api_client(server.url) as client:
        location = open_session(client, repo)
        assert _patch(client, location, data[:1_000_000], 0).status_code == 202
    upload_id = location.rsplit("/", 1)[1]
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data) - 1_000_000}\r\n\r\n"
    ).encode()
    sent = 9_000_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + data[1_000_000 : 1_000_000 + sent])
        # Wait until the doomed PATCH has put bytes on disk past the persisted offset, then crash.
        deadline = time.monotonic() + 60
        while not staged_past(server, upload_id, 1_000_000):
            assert time.monotonic() < deadline, "the streaming PATCH never reached the disk"
            time.sleep(0.02)
        server.kill()
    server.restart()
    with api_client(server.url) as client:
        offset = session_offset(client, location)
        assert 1_000_000 <= offset <= 1_000_000 + sent
        r = client.put(
            location,
            params={"digest": digest},
            content=data[offset:],
            headers={"Content-Range": f"{offset}-{len(data) - 1}"},
        )
        assert r.status_code == 201, r.text
        assert digest_of(client.get(f"/v2/{repo}/blobs/{digest}").content) == digest


def _push_chunked(base_url: str, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    with api_client(base_url) as client:
        location = open_session(client, repo)
        half = len(data) // 2
        assert _patch(client, location, data[:half], 0).status_code == 202
        r = client.put(location, params={"digest": digest}, content=data[half:])
        assert r.status_code == 201, r.text
    return digest


def test_concurrent_pushes_over_two_workers_all_succeed(registry_server: DockyardServer) -> None:
    repo = f"workers/concurrent-{uuid.uuid4().hex[:8]}"
    shared = os.urandom(200_000)
    blobs = [os.urandom(100_000 + i) for i in range(12)] + [shared] * 6
    with ThreadPoolExecutor(max_workers=9) as pool:
        digests = list(pool.map(lambda b: _push_chunked(registry_server.url, repo, b), blobs))
    with api_client(registry_server.url) as client:
        for data, digest in zip(blobs, digests, strict=True):
            assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_workers_serve_without_loading_pydantic(start_server: StartServer) -> None:
    # The settings reach the workers as plain values (frozen.py): pydantic, ~10 MiB a worker,
    # stays in the process that parsed them.
    server = start_server(workers=2)
    repo = f"workers/plain-{uuid.uuid4().hex[:8]}"
    with api_client(server.url) as client:
        for _ in range(4):
            data = os.urandom(10_000)
            digest = push_blob(client, repo, data)
            assert client.get(f"/v2/{repo}/blobs/{digest}").content == data
    assert server.process is not None
    parent = server.process.pid
    workers = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(workers) == 2
    for pid in workers:
        assert "pydantic" not in Path(f"/proc/{pid}/maps").read_text(), pid


def test_a_tag_pulled_on_both_workers_then_moved_answers_the_new_manifest_on_both(
    start_server: StartServer,
) -> None:
    """Each worker remembers a tag's manifest and its response headers between pulls: a push
    answered by one worker must still be what the next pull sees, on either worker."""
    server = start_server(workers=2)
    repo = "workers/moved"
    with api_client(server.url) as client:
        old = push_image(client, repo, "latest", seed="old")
    for image in (old, None):
        if image is None:  # the tag moves, after both workers have answered pulls of it
            with api_client(server.url) as client:
                image = push_image(client, repo, "latest", seed="new")
            assert image.digest != old.digest
        for _ in range(8):  # a new connection each time: either worker may answer
            with api_client(server.url) as client:
                for method in ("GET", "HEAD"):
                    r = client.request(
                        method, f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST}
                    )
                    assert r.status_code == 200, r.text
                    assert r.headers["docker-content-digest"] == image.digest
                    assert r.headers["etag"] == f'"{image.digest}"'
                    assert r.headers["content-length"] == str(len(image.manifest))
                    assert r.headers["content-type"] == OCI_MANIFEST
                    if method == "GET":
                        assert r.content == image.manifest
