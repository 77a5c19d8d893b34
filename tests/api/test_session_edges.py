"""Session behaviours a resuming client relies on."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import httpx

from tests.support.api_helpers import digest_of, open_session, session_offset
from tests.support.server import DockyardServer
from tests.support.staging import session_writer_active


def test_bytes_sent_before_the_client_hangs_up_are_kept(
    registry_server: DockyardServer, client: httpx.Client, repo: str
) -> None:
    location = open_session(client, repo)
    body = os.urandom(256 * 1024)
    with socket.create_connection(("127.0.0.1", registry_server.port)) as sock:
        # The whole chunk in one write, then gone: the body arrives in the server's buffer
        # together with the hang-up.
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * len(body)}\r\n\r\n".encode() + body
        )
    deadline = time.monotonic() + 60
    while session_offset(client, location) != len(body) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_offset(client, location) == len(body)
    rest = os.urandom(1000)
    assert client.patch(location, content=rest).status_code == 202
    r = client.put(location, params={"digest": digest_of(body + rest)})
    assert r.status_code == 201


def test_an_empty_patch_answers_where_the_session_stands(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    assert client.patch(location, content=b"x" * 100).status_code == 202
    r = client.patch(location, content=b"")
    assert r.status_code == 202
    assert r.headers["range"] == "0-99"
    assert r.headers["location"] == location


def _stalled_patch(server: DockyardServer, location: str, sent: bytes, declared: int) -> socket.socket:
    """A PATCH whose body stops after ``sent`` and whose connection stays open: a client whose
    network went away without the server seeing a FIN or RST."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 0-{declared - 1}\r\n"
    sock.sendall(f"{head}Content-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def test_a_stalled_patch_yields_the_session_to_the_client_resuming_it(
    start_server: Callable[..., DockyardServer],
) -> None:
    """The resuming client is refused once (416, the session is busy), and the stalled request
    gives the session up: the client continues from the bytes that arrived, long before the
    60 s body timeout."""
    body_timeout = 300  # far beyond any delay a busy machine adds: letting go early is the takeover
    server = start_server(
        workers=2,
        env={"DOCKYARD_TAKEOVER_AFTER_SECONDS": "1", "DOCKYARD_BODY_TIMEOUT_SECONDS": str(body_timeout)},
    )
    with httpx.Client(base_url=server.url, timeout=60) as client:
        location = open_session(client, "takeover/resume")
        data = os.urandom(400_000)
        stalled = _stalled_patch(server, location, data[:150_000], len(data))
        try:
            deadline = time.monotonic() + 60
            while not session_writer_active(server, location.rsplit("/", 1)[1]):
                assert time.monotonic() < deadline, "the stalled PATCH never took the session"
                time.sleep(0.05)
            first = client.patch(location, content=data, headers={"Content-Range": f"0-{len(data) - 1}"})
            assert first.status_code == 416, first.text
            assert first.headers["location"] == location
            t0 = time.monotonic()
            while True:  # what dockyard push does: empty PATCHes with back-off until it is free
                answer = client.patch(location, content=b"")
                if answer.status_code == 202:
                    break
                assert answer.status_code == 416, answer.text
                assert time.monotonic() - t0 < body_timeout / 2, "the stalled request never let go"
                time.sleep(0.25)
            waited = time.monotonic() - t0
            assert answer.headers["range"] == f"0-{150_000 - 1}"
            chunk = {"Content-Range": f"150000-{len(data) - 1}"}
            rest = client.patch(location, content=data[150_000:], headers=chunk)
            assert rest.status_code == 202, rest.text
            assert client.put(location, params={"digest": digest_of(data)}).status_code == 201
            assert client.get(f"/v2/takeover/resume/blobs/{digest_of(data)}").content == data
            assert waited < body_timeout / 2, waited  # the takeover, not the body timeout, freed it
            # the stalled request was answered and closed (408): its bytes are not appended later
            stalled.settimeout(60)
            assert stalled.recv(65536).startswith(b"HTTP/1.1 408")
        finally:
            stalled.close()


def test_a_stalled_patch_nobody_else_wants_keeps_its_session(
    start_server: Callable[..., DockyardServer],
) -> None:
    """Without a newer request, a body that pauses past the takeover delay is not cut: a slow
    link is not a dead one."""
    server = start_server(env={"DOCKYARD_TAKEOVER_AFTER_SECONDS": "1"})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        location = open_session(client, "takeover/slow")
        data = os.urandom(200_000)
        stalled = _stalled_patch(server, location, data[:50_000], len(data))
        try:
            time.sleep(3)
            stalled.sendall(data[50_000:])
            stalled.settimeout(60)
            assert stalled.recv(65536).startswith(b"HTTP/1.1 202")
        finally:
            stalled.close()
        assert session_offset(client, location) == len(data)
