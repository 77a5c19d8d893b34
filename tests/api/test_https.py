"""Blobs over HTTPS (``--tls-cert``/``--tls-key``), on both event loops: where the kernel cannot
send the file (the bytes must be encrypted), a pull, whole or ranged, and a push still carry
every byte."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.auth.support import Pki
from tests.support.api_helpers import digest_of, no_server_errors, open_session
from tests.support.server import DockyardServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"), users=())


@pytest.fixture(scope="module", params=["auto", "asyncio"])
def https_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[DockyardServer]:
    """Two workers over TLS, on the default loop (uvloop) and on the stock one."""
    server = DockyardServer(
        data_dir=tmp_path_factory.mktemp(f"https-{request.param}") / "data",
        workers=2,
        env={"DOCKYARD_EVENT_LOOP": request.param},
        extra_args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        scheme="https",
        verify=pki.context(),
    ).start()
    yield server
    server.stop()


@pytest.fixture
def https(https_server: DockyardServer, pki: Pki) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=https_server.url,
        verify=pki.context(),
        timeout=60.0,
        event_hooks={"response": [no_server_errors]},
    ) as client:
        yield client


def test_monolithic_push_then_whole_and_ranged_pulls(https: httpx.Client, repo: str) -> None:
    data = os.urandom(9 * MIB + 123)
    digest = digest_of(data)
    location = open_session(https, repo)
    put = https.put(location, params={"digest": digest}, content=data)
    assert put.status_code == 201, put.text
    assert put.headers["docker-content-digest"] == digest

    whole = https.get(f"/v2/{repo}/blobs/{digest}")
    assert whole.status_code == 200
    assert whole.headers["content-length"] == str(len(data))
    assert whole.content == data
    for first, last in ((0, 0), (MIB - 1, 3 * MIB + 5), (len(data) - 10, len(data) - 1)):
        part = https.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={first}-{last}"})
        assert part.status_code == 206, (first, last)
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
        assert part.content == data[first : last + 1]


def test_chunked_push_streamed_body_round_trip(https: httpx.Client, repo: str) -> None:
    """PATCHes with Content-Range, one streamed without a length, then PUT ?digest=."""
    data = os.urandom(5 * MIB + 7)
    digest = digest_of(data)
    location = open_session(https, repo)
    first = https.patch(
        location,
        content=data[: 2 * MIB],
        headers={"Content-Range": f"0-{2 * MIB - 1}", "Content-Type": "application/octet-stream"},
    )
    assert first.status_code == 202, first.text
    assert first.headers["range"] == f"0-{2 * MIB - 1}"
    rest = data[2 * MIB :]
    streamed = https.patch(
        first.headers["location"],
        content=(rest[i : i + 300_000] for i in range(0, len(rest), 300_000)),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert streamed.status_code == 202, streamed.text
    assert streamed.headers["range"] == f"0-{len(data) - 1}"
    put = https.put(streamed.headers["location"], params={"digest": digest})
    assert put.status_code == 201, put.text
    assert https.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_a_wrong_digest_over_tls_publishes_nothing(https: httpx.Client, repo: str) -> None:
    data = os.urandom(MIB)
    wrong = digest_of(data + b"!")
    location = open_session(https, repo)
    put = https.put(location, params={"digest": wrong}, content=data)
    assert put.status_code == 400
    assert put.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert https.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
