"""Session behaviours a resuming client relies on."""

from __future__ import annotations

import os
import socket
import time

import httpx

from tests.support.api_helpers import digest_of, open_session, session_offset
from tests.support.server import DockyardServer


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
    deadline = time.monotonic() + 5
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
