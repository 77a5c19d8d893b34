"""Part URLs go only to the identity that opened the session, with push access checked when asked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.support import PASSWORDS, start_auth_server, unique
from tests.direct.support import MiB, ask_parts, open_direct, put_part, split
from tests.support.api_helpers import assert_error, digest_of, no_server_errors
from tests.support.server import DockyardServer
from tests.support.services import SharedBackends


@pytest.fixture(scope="module")
def basic_s3_server(
    shared_backends: SharedBackends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    server = start_auth_server(
        tmp_path_factory.mktemp("direct-auth") / "data", "basic", env=shared_backends.server_env()
    )
    yield server
    server.stop()


def _client(server: DockyardServer, user: str | None) -> httpx.Client:
    auth = (user, PASSWORDS[user]) if user else None
    return httpx.Client(
        base_url=server.url, auth=auth, timeout=30, event_hooks={"response": [no_server_errors]}
    )


def test_another_identity_cannot_get_urls_or_close_the_session(
    basic_s3_server: DockyardServer, tmp_path: Path
) -> None:
    repo = unique("team/direct")
    data = os.urandom(5 * MiB + 10)
    parts = {1: 5 * MiB, 2: 10}
    body = {"parts": [{"number": n, "size": s} for n, s in parts.items()]}
    with (
        _client(basic_s3_server, "alice") as alice,
        _client(basic_s3_server, "bob") as bob,
        _client(basic_s3_server, "carol") as carol,
        _client(basic_s3_server, None) as anonymous,
    ):
        location = open_direct(alice, repo).headers["location"]
        # bob may push to team/** too, but the session is alice's: to him it does not exist.
        assert_error(bob.post(location + "/parts", json=body), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(bob.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(bob.put(location, params={"digest": digest_of(data)}), 404, "BLOB_UPLOAD_UNKNOWN")
        # carol may not push there at all; an anonymous client is asked to log in.
        assert_error(carol.post(location + "/parts", json=body), 403, "DENIED")
        r = anonymous.post(location + "/parts", json=body)
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"].startswith("Basic")
        urls = ask_parts(alice, location, parts)
        for number, piece in split(data).items():
            assert put_part(urls[number], piece).status_code == 200
        assert_error(bob.put(location, params={"digest": digest_of(data)}), 404, "BLOB_UPLOAD_UNKNOWN")
        r = alice.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
        assert bob.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 200
