"""The spec's client rules, against small fake registries that make each rule matter:
the latest Location (relative or absolute, changing every time), OCI-Chunk-Min-Length, redirects
that must not carry Authorization to another host, and the parsers at the edge."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dockyard.client.commands import parse_size
from dockyard.client.content import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    PlatformNotFound,
    choose_platform,
    platform_matches,
)
from dockyard.client.layout import OciLayout, split_layout_argument
from dockyard.client.progress import Progress
from dockyard.client.pull import download_blob
from dockyard.client.reference import ImageReference
from dockyard.client.registry import Challenge, ClientOptions, Registry
from dockyard.client.upload import BlobUploader, BytesSource, parse_upload_range

MIB = 1024 * 1024
A64 = "sha256:" + "a" * 64
BASIC = "Basic " + base64.b64encode(b"alice:secret").decode()


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class ChangingLocationRegistry:
    """Every answer names a new session URL, alternately relative and absolute; only the latest one
    works. It asks for chunks of at least 3 MiB and records what it got."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.step = 0
        self.chunk_sizes: list[int] = []
        self.port = 0
        self.blobs: dict[str, bytes] = {}

    def location(self) -> str:
        path = f"/v2/r/blobs/uploads/s1?step={self.step}"
        return path if self.step % 2 else f"http://127.0.0.1:{self.port}{path}"

    def app(self) -> web.Application:
        async def ping(request: web.Request) -> web.Response:
            return web.Response(status=200)

        async def head(request: web.Request) -> web.Response:
            data = self.blobs.get(request.match_info["digest"])
            return web.Response(
                status=404 if data is None else 200, headers={"Content-Length": str(len(data or b""))}
            )

        async def post(request: web.Request) -> web.Response:
            return web.Response(
                status=202, headers={"Location": self.location(), "OCI-Chunk-Min-Length": str(3 * MIB)}
            )

        async def session(request: web.Request) -> web.Response:
            if request.query.get("step") != str(self.step):
                return web.Response(status=404, text="stale Location")
            body = await request.read()
            if request.method == "PATCH":
                start = int(request.headers["Content-Range"].split("-")[0])
                assert start == len(self.data)
                self.data += body
                self.chunk_sizes.append(len(body))
            self.step += 1
            if request.method == "PUT":
                digest = request.query["digest"]
                assert digest == "sha256:" + hashlib.sha256(self.data).hexdigest()
                self.blobs[digest] = bytes(self.data)
                return web.Response(status=201, headers={"Location": f"/v2/r/blobs/{digest}"})
            return web.Response(
                status=202 if request.method == "PATCH" else 204,
                headers={"Location": self.location(), "Range": f"0-{len(self.data) - 1}"},
            )

        app = web.Application(client_max_size=64 * MIB)
        app.router.add_get("/v2/", ping)
        app.router.add_route("HEAD", "/v2/r/blobs/{digest}", head)
        app.router.add_post("/v2/r/blobs/uploads/", post)
        app.router.add_route("*", "/v2/r/blobs/uploads/s1", session)
        return app


def test_each_request_goes_to_the_latest_location_in_chunks_no_smaller_than_the_minimum() -> None:
    fake = ChangingLocationRegistry()
    data = os.urandom(10 * MIB + 123)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def test() -> None:
        runner, fake.port = await _serve(fake.app())
        try:
            async with Registry(f"http://127.0.0.1:{fake.port}") as registry:
                uploader = BlobUploader(registry, "r", chunk_size=1 * MIB)
                result = await uploader.upload(digest, BytesSource(data))
        finally:
            await runner.cleanup()
        assert result.how == "chunked" and result.faults == 0

    _run(test)
    assert fake.blobs[digest] == data
    assert fake.chunk_sizes[:-1] == [3 * MIB] * 3 and fake.chunk_sizes[-1] == MIB + 123


def test_a_redirected_blob_get_does_not_carry_authorization_to_the_other_host(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: dict[str, list[str | None]] = {"registry": [], "store": []}

    async def test() -> None:
        async def store(request: web.Request) -> web.StreamResponse:
            seen["store"].append(request.headers.get("Authorization"))
            return web.Response(body=data, content_type="application/octet-stream")

        store_app = web.Application()
        store_app.router.add_get("/bucket/blob", store)
        store_runner, store_port = await _serve(store_app)

        async def guarded(request: web.Request) -> web.StreamResponse:
            seen["registry"].append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != BASIC:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
            if request.path == "/v2/":
                return web.Response(status=200)
            return web.Response(
                status=307, headers={"Location": f"http://127.0.0.1:{store_port}/bucket/blob?X-Signature=abc"}
            )

        registry_app = web.Application()
        registry_app.router.add_get("/v2/", guarded)
        registry_app.router.add_get("/v2/r/blobs/{digest}", guarded)
        registry_runner, registry_port = await _serve(registry_app)
        layout = OciLayout(tmp_path / "layout")
        layout.init()
        try:
            options = ClientOptions(username="alice", password="secret")
            async with Registry(f"http://127.0.0.1:{registry_port}", options) as registry:
                descriptor = Descriptor("application/octet-stream", digest, len(data))
                await download_blob(registry, "r", descriptor, layout, Progress(quiet=True))
        finally:
            await registry_runner.cleanup()
            await store_runner.cleanup()
        assert layout.blob_path(digest).read_bytes() == data

    _run(test)
    assert seen["registry"][-1] == BASIC
    assert seen["store"] == [None]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/a/b:v1", ("127.0.0.1:5000", "a/b", "v1", None, "http://127.0.0.1:5000")),
        ("registry.example.com/team/app", ("registry.example.com", "team/app", None, None, "https://registry.example.com")),
        (f"http://reg.internal:8080/x@{A64}", ("reg.internal:8080", "x", None, A64, "http://reg.internal:8080")),
        ("https://localhost:5000/x:1.0", ("localhost:5000", "x", "1.0", None, "https://localhost:5000")),
        ("[::1]:5000/x", ("[::1]:5000", "x", None, None, "http://[::1]:5000")),
    ],
)  # fmt: skip
def test_image_references(text: str, expected: tuple[Any, ...]) -> None:
    ref = ImageReference.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest, ref.base_url()) == expected


@pytest.mark.parametrize("text", ["", "host", "host/UPPER", "host/a:bad tag", "host/a@sha256:zz"])
def test_invalid_image_references(text: str) -> None:
    with pytest.raises(ValueError):
        ImageReference.parse(text)


def test_upload_ranges_sizes_challenges_and_layout_arguments(tmp_path: Path) -> None:
    assert parse_upload_range("0--1") == 0
    assert parse_upload_range("0-0") == 0  # Distribution's empty session
    assert parse_upload_range("0-1048575") == MIB
    assert parse_upload_range("bytes=0-9") == 10
    assert parse_upload_range(None) is None and parse_upload_range("junk") is None
    assert parse_size("16MiB") == 16 * MIB and parse_size("512k") == 512 * 1024 and parse_size("100") == 100
    challenge = Challenge.parse(
        'Bearer realm="https://auth.example.com/token",service="registry",scope="repository:a/b:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry",
        "scope": "repository:a/b:pull,push",
    }
    assert split_layout_argument(f"{tmp_path}/l:v1") == (tmp_path / "l", "v1")
    assert split_layout_argument(f"{tmp_path}/l@sha256:{'a' * 64}") == (tmp_path / "l", f"sha256:{'a' * 64}")
    (tmp_path / "odd:name").mkdir()
    assert split_layout_argument(f"{tmp_path}/odd:name") == (tmp_path / "odd:name", None)


@pytest.mark.parametrize(
    ("wanted", "offered", "matches"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64/v8", True),
        ("linux/arm/v7", "linux/arm/v6", False),
        ("linux/arm/v7", "linux/arm", False),
        ("linux/amd64", "windows/amd64", False),
        ("linux/amd", "linux/amd64", False),
    ],
)
def test_a_platform_matches_by_parts_and_a_missing_variant_matches_any(
    wanted: str, offered: str, matches: bool
) -> None:
    assert platform_matches(wanted, offered) is matches


def test_the_first_matching_entry_of_an_index_is_chosen_and_a_miss_says_what_there_is() -> None:
    def entry(n: int, **platform: str) -> dict[str, Any]:
        return {"mediaType": OCI_MANIFEST, "digest": f"sha256:{n:064x}", "size": 1, "platform": platform}

    index = Manifest.parse(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    entry(1, os="linux", architecture="arm", variant="v6"),
                    entry(2, os="linux", architecture="arm", variant="v7"),
                    entry(3, os="linux", architecture="arm", variant="v7"),
                    {"mediaType": OCI_MANIFEST, "digest": f"sha256:{4:064x}", "size": 1},
                ],
            }
        ).encode()
    )
    assert choose_platform(index, "linux/arm/v7").digest == f"sha256:{2:064x}"
    assert choose_platform(index, "linux/arm").digest == f"sha256:{1:064x}"
    with pytest.raises(PlatformNotFound, match=r"it has: linux/arm/v6, linux/arm/v7\)"):
        choose_platform(index, "linux/amd64")
