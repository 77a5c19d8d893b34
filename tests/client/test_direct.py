"""``dockyard push`` and ``copy`` with direct-to-bucket uploads: parts go to SeaweedFS, not through
the node; without the offer (or when the store is out of reach) the same command uses PATCH."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.client.registry import Registry
from dockyard.client.state import ResumeState
from dockyard.client.upload import BlobUploader, BytesSource
from tests.client.support import build_big_image, cli, cli_json, file_digest
from tests.support.api_helpers import digest_of
from tests.support.server import DockyardServer, free_port
from tests.support.services import SharedBackends

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3_node(
    shared_backends: SharedBackends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    env = shared_backends.server_env(redirect=True)
    server = DockyardServer(tmp_path_factory.mktemp("direct-client") / "data", workers=2, env=env).start()
    yield server
    server.stop()


def _received(server: DockyardServer) -> float:
    """Request body bytes the node has received, all routes (``dockyard_http_request_bytes_total``)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(
        float(v) for v in re.findall(r"^dockyard_http_request_bytes_total\{[^}]*\} (\S+)$", text, re.M)
    )


def test_push_goes_direct_and_the_node_receives_almost_none_of_the_bytes(
    s3_node: DockyardServer, tmp_path: Path
) -> None:
    size = 40 * MIB + 123
    image = build_big_image(tmp_path / "layout", size, extra_layers=1)
    before = _received(s3_node)
    doc = cli_json(
        "push",
        f"{image.layout}:latest",
        f"{s3_node.host}/client/direct:v1",
        "--chunk-size",
        "8MiB",
        "--jobs",
        "4",
    )
    received = _received(s3_node) - before
    layer = doc["blobs"][image.layer.digest]
    assert layer["how"] == "direct" and layer["sent"] == size
    assert received < 0.01 * size, received  # parts requests, the manifest and a small blob
    out = tmp_path / "out"
    pulled = cli("pull", f"{s3_node.host}/client/direct:v1", str(out))
    assert pulled.exit_code == 0, pulled.output
    assert file_digest(out / "blobs" / "sha256" / image.layer.digest[7:]) == image.layer.digest

    again = cli_json("push", f"{image.layout}:latest", f"{s3_node.host}/client/direct2:v1", "--no-direct")
    assert again["blobs"][image.layer.digest]["how"] == "chunked"


def test_copy_into_an_s3_registry_goes_direct(
    s3_node: DockyardServer, registry_server: DockyardServer, tmp_path: Path
) -> None:
    image = build_big_image(tmp_path / "layout", 12 * MIB)
    assert (
        cli("push", f"{image.layout}:latest", f"{registry_server.host}/client/copy-src:v1", "-q").exit_code
        == 0
    )
    doc = cli_json(
        "copy",
        f"{registry_server.host}/client/copy-src:v1",
        f"{s3_node.host}/client/copy-dst:v1",
        "--state",
        str(tmp_path / "copy-state.json"),
    )
    assert doc["blobs"].get("direct") == 1, doc
    r = httpx.head(f"{s3_node.url}/v2/client/copy-dst/blobs/{image.layer.digest}")
    assert r.status_code == 200 and r.headers["content-length"] == str(12 * MIB)


def test_probe_reports_direct_uploads(s3_node: DockyardServer) -> None:
    results = cli_json("probe", s3_node.host)["results"]
    assert results["direct_uploads"] == "s3-multipart"
    assert results["chunk_min_length"] == 5 * MIB
    assert results["cleanup"] is True


def test_a_store_out_of_the_clients_reach_falls_back_to_patch(
    shared_backends: SharedBackends, tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens there: the URLs the node hands out cannot be reached
    env = {**shared_backends.server_env(), "DOCKYARD_S3__PUBLIC_ENDPOINT_URL": f"http://127.0.0.1:{closed}"}
    server = DockyardServer(tmp_path / "data", workers=1, env=env).start()
    try:
        image = build_big_image(tmp_path / "layout", 9 * MIB)
        doc = cli_json("push", f"{image.layout}:latest", f"{server.host}/client/fallback:v1")
        assert doc["blobs"][image.layer.digest]["how"] == "chunked"
        r = httpx.head(f"{server.url}/v2/client/fallback/blobs/{image.layer.digest}")
        assert r.status_code == 200
    finally:
        server.stop()


class _Crash(Exception):
    pass


class CrashingSource(BytesSource):
    """The blob's bytes, until reading at or past ``crash_at`` (the client dies there)."""

    def __init__(self, data: bytes, crash_at: int | None) -> None:
        super().__init__(data)
        self.crash_at = crash_at

    def read(self, offset: int, length: int) -> AsyncIterator[bytes]:
        # Raised as the request starts: inside the body, the HTTP client would call it a fault.
        if self.crash_at is not None and offset >= self.crash_at:
            raise _Crash()
        return super().read(offset, length)


def test_a_crashed_direct_push_resumes_with_the_parts_the_store_lacks(
    s3_node: DockyardServer, tmp_path: Path
) -> None:
    data = os.urandom(26 * MIB)
    digest = digest_of(data)
    state_path = tmp_path / "state.json"

    async def push(crash_at: int | None) -> tuple[str, int]:
        async with Registry(s3_node.url) as registry:
            uploader = BlobUploader(
                registry, "client/resume", chunk_size=5 * MIB, state=ResumeState(state_path), jobs=1
            )
            result = await uploader.upload(digest, CrashingSource(data, crash_at))
            return result.how, result.sent

    with pytest.raises(_Crash):
        asyncio.run(push(crash_at=15 * MIB))  # parts 1-3 reach the store, then the client dies
    assert state_path.exists()
    how, sent = asyncio.run(push(crash_at=None))
    assert how == "direct"
    assert sent == len(data) - 15 * MIB  # only the parts the store lacked
    assert not state_path.exists()
    with httpx.Client(base_url=s3_node.url, follow_redirects=True, timeout=60) as c:
        assert c.get(f"/v2/client/resume/blobs/{digest}").content == data
