"""Graceful shutdown: on SIGTERM a node stops taking connections, lets the requests in flight
finish (up to ``shutdown_grace_seconds``), cuts an upload still arriving after that keeping its
bytes, and exits 0; the upload session goes on after a restart."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import httpx

from tests.lifecycle.support import exit_code, refuses_connections, sigterm, wait_for
from tests.support.api_helpers import (
    api_client,
    digest_of,
    open_session,
    parse_raw_response,
    session_offset,
)
from tests.support.server import DockyardServer, free_port
from tests.support.staging import session_writer_active

MiB = 1 << 20


def _patch_head(node: DockyardServer, location: str, length: int) -> bytes:
    return (
        f"PATCH {location} HTTP/1.1\r\nHost: {node.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
        f"Content-Range: 0-{length - 1}\r\n\r\n"
    ).encode()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _finish(node: DockyardServer, location: str, data: bytes) -> None:
    """Continue the session on the restarted node from where it stands, commit, pull."""
    repo = location.split("/blobs/")[0].removeprefix("/v2/")
    digest = digest_of(data)
    with api_client(node.url) as client:
        offset = session_offset(client, location)
        r = client.put(
            location,
            params={"digest": digest},
            content=data[offset:],
            headers={"Content-Range": f"{offset}-{len(data) - 1}"} if offset < len(data) else {},
        )
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data


def test_sigterm_lets_the_upload_in_flight_finish_and_exits_0(
    start_server: Callable[..., DockyardServer],
) -> None:
    probes = f"127.0.0.1:{free_port()}"  # readiness stays observable while the node drains
    node = start_server(workers=2, env={"DOCKYARD_HEALTH_LISTEN": probes})
    data = os.urandom(6 * MiB)
    with api_client(node.url) as client:
        location = open_session(client, "drain/finish")
    upload_id = location.rsplit("/", 1)[1]
    idle = socket.create_connection(("127.0.0.1", node.port), timeout=60)
    idle.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {node.host}\r\n\r\n".encode())
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # a keep-alive connection, now idle
    with socket.create_connection(("127.0.0.1", node.port), timeout=60) as sock:
        sock.sendall(_patch_head(node, location, 4 * MiB) + data[: 2 * MiB])
        wait_for(lambda: session_writer_active(node, upload_id), "the PATCH is being served")
        sigterm(node)
        wait_for(lambda: refuses_connections(node.port), "the listening socket closes")
        draining = httpx.get(f"http://{probes}/health/ready", timeout=30)
        assert draining.status_code == 503 and draining.json() == {"status": "unavailable", "draining": True}
        assert httpx.get(f"http://{probes}/health/live", timeout=30).status_code == 200
        idle.settimeout(1.0)
        wait_for(lambda: _closed_by_peer(idle), "the idle keep-alive connection is closed")
        idle.close()
        sock.sendall(data[2 * MiB : 4 * MiB])  # the request in flight goes on to its end
        answer = parse_raw_response(_read_all(sock), "PATCH")
    assert answer.status == 202, answer.body
    assert answer.headers["range"] == f"0-{4 * MiB - 1}"
    assert answer.headers["connection"] == "close"  # a draining node takes no next request
    assert exit_code(node) == 0
    node.start(timeout=120)
    _finish(node, location, data)


def test_sigterm_cuts_an_upload_still_arriving_at_the_deadline_keeping_its_bytes(
    start_server: Callable[..., DockyardServer],
) -> None:
    # The body timeout is far away: only the grace period can end this PATCH.
    env = {"DOCKYARD_SHUTDOWN_GRACE_SECONDS": "1", "DOCKYARD_BODY_TIMEOUT_SECONDS": "3600"}
    node = start_server(workers=1, env=env)
    data = os.urandom(8 * MiB)
    with api_client(node.url) as client:
        location = open_session(client, "drain/cut")
    upload_id = location.rsplit("/", 1)[1]
    with socket.create_connection(("127.0.0.1", node.port), timeout=120) as sock:
        sock.sendall(_patch_head(node, location, len(data)) + data[: 3 * MiB])  # then it stalls
        wait_for(lambda: session_writer_active(node, upload_id), "the PATCH is being served")
        sigterm(node)
        raw = _read_all(sock)
    if raw:  # the answer, unless the connection was reset with bytes of ours still unread
        answer = parse_raw_response(raw, "PATCH")
        assert answer.status == 503, answer.body
        assert answer.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert answer.headers["retry-after"] == "1"
    assert exit_code(node) == 0
    node.start(timeout=120)
    with api_client(node.url) as client:
        kept = session_offset(client, location)
    assert 0 < kept <= 3 * MiB  # what the node had read when it was cut, recorded
    _finish(node, location, data)  # and those bytes are the right ones: the digest matches
