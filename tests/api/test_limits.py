"""Resource limits: slow or greedy clients and a full disk must not take the registry down."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_MANIFEST,
    assert_error,
    digest_of,
    image_manifest,
    push_blob,
    session_offset,
)
from tests.support.server import DockyardServer
from tests.support.services import TEST_BACKEND

MiB = 1 << 20


def _connect(server: DockyardServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Wait for the server to close the connection; what it sent before closing."""
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True, received
            received += data
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_headers_sent_forever_are_cut_off_at_the_idle_timeout(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(env={"DOCKYARD_IDLE_TIMEOUT_SECONDS": "1"})
    slow = _connect(server)
    slow.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for _ in range(3):  # a header byte now and then, never the end of the headers
        slow.sendall(b"X")
        time.sleep(0.3)
    closed, _ = _closed_within(slow, 60)  # cut at the 1 s idle timeout; 60 s: never, on any machine
    assert closed and time.monotonic() - started < 60
    assert httpx.get(f"{server.url}/v2/").status_code == 200


def test_stalled_body_gets_408_and_the_session_keeps_what_arrived(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(env={"DOCKYARD_BODY_TIMEOUT_SECONDS": "1"})
    with httpx.Client(base_url=server.url) as client:
        location = client.post("/v2/limits/slow/blobs/uploads/").headers["location"]
        sock = _connect(server)
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + b"a" * 10
        )
        # While that body stalls, the registry serves everyone else.
        assert client.get("/v2/").status_code == 200
        _, answer = _closed_within(sock, 60)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        status = client.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == "0-9"


def test_thousands_of_sessions_hit_the_per_repository_limit(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(env={"DOCKYARD_MAX_UPLOADS_PER_REPOSITORY": "100"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        blob = os.urandom(1000)
        digest = push_blob(client, "limits/pull", blob)
        answers: dict[int, int] = {}
        for i in range(1500):
            r = client.post(f"/v2/limits/greedy{i % 10}/blobs/uploads/")
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            if r.status_code == 429:
                assert r.headers["retry-after"].isdigit()
                assert_error(r, 429, "TOOMANYREQUESTS")
        assert answers == {202: 1000, 429: 500}
        assert client.get(f"/v2/limits/pull/blobs/{digest}").content == blob
        assert client.post("/v2/limits/other/blobs/uploads/").status_code == 202


def test_oversized_headers_are_refused_and_the_server_goes_on(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(env={"DOCKYARD_MAX_HEADER_BYTES": "4096"})
    r = httpx.get(f"{server.url}/v2/", headers={"X-Big": "a" * 20000})
    assert 400 <= r.status_code < 500
    assert httpx.get(f"{server.url}/v2/").status_code == 200


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (root only; CI runs as root)."""
    if TEST_BACKEND != "filesystem+sqlite":
        pytest.skip("a full local disk is a filesystem-storage condition")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full test needs root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_answers_507_and_keeps_serving_pulls(
    small_disk: Path, start_server: Callable[..., DockyardServer]
) -> None:
    server = start_server(data_dir=small_disk / "data")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        config, layer = os.urandom(200), os.urandom(2 * MiB)
        for data in (config, layer):
            push_blob(client, "full/app", data)
        body = image_manifest(config, [layer])
        assert (
            client.put(
                "/v2/full/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
            ).status_code
            == 201
        )

        big = os.urandom(40 * MiB)
        r = client.post("/v2/full/app/blobs/uploads/", params={"digest": digest_of(big)}, content=big)
        assert r.status_code == 507, r.text
        assert r.json()["errors"][0]["code"]
        assert client.get(f"/v2/full/app/blobs/{digest_of(big)}").status_code == 404

        location = client.post("/v2/full/app/blobs/uploads/").headers["location"]
        r = client.patch(location, content=big)
        assert r.status_code == 507, r.text
        staged = client.get(location)
        assert staged.status_code == 204  # the session stands at what fit, and says so
        assert client.delete(location).status_code == 204

        # Pulls go on; so do small pushes once space is back.
        assert client.get("/v2/full/app/manifests/v1").content == body
        assert client.get(f"/v2/full/app/blobs/{digest_of(layer)}").content == layer
        push_blob(client, "full/app", os.urandom(1000))
    server.stop()
    out = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--data-dir", str(server.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout)["clean"], out.stdout


def test_a_patch_cut_short_by_a_full_disk_keeps_exactly_what_fit(
    small_disk: Path, tmp_path: Path, start_server: Callable[..., DockyardServer]
) -> None:
    """Blobs on a full disk, metadata elsewhere: the session records what reached the disk, and
    that is exactly the stream's first bytes (nothing written after a failed write), so the
    client can go on from there."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'metadata.db'}"
    server = start_server(data_dir=small_disk / "data", env={"DOCKYARD_DATABASE_URL": database})
    with httpx.Client(base_url=server.url, timeout=60) as client:
        big = os.urandom(40 * MiB)
        location = client.post("/v2/full/app/blobs/uploads/").headers["location"]
        r = client.patch(location, content=big)
        assert r.status_code == 507, r.text
        fit = session_offset(client, location)
        assert 16 * MiB < fit < len(big)
        done = client.put(location, params={"digest": digest_of(big[:fit])})
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/full/app/blobs/{digest_of(big[:fit])}").content == big[:fit]
