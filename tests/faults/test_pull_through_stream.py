"""The pull-through cache's stream when its own store fails while it fills: before the first
byte the client gets a 503 with ``Retry-After``; after it, the connection is cut (a short body of
the blob's own bytes, never an error response inside it); the next pull is whole."""

from __future__ import annotations

import os

import httpx

from tests.faults.conftest import Start
from tests.faults.support import assert_unavailable
from tests.support.api_helpers import api_client, push_blob
from tests.support.server import DockyardServer

MiB = 1 << 20


def test_a_fill_failing_before_and_after_the_first_byte(faulty: Start) -> None:
    upstream = faulty("")
    blob = os.urandom(6 * MiB + 5)
    repo = "faults/cached"
    with api_client(upstream.url) as up:
        digest = push_blob(up, repo, blob)
    # The first fill fails at its first write; the second once every byte is staged (publishing).
    cache: DockyardServer = faulty(
        "patch.write*1,commit.link*1",
        env={"DOCKYARD_PROXY__REMOTE_URL": upstream.url, "DOCKYARD_PROXY__TIMEOUT_SECONDS": "30"},
    )
    url = f"/v2/{repo}/blobs/{digest}"
    with httpx.Client(base_url=cache.url, timeout=90.0) as client:
        assert_unavailable(client.get(url))
        got = bytearray()
        with client.stream("GET", url) as response:
            assert response.status_code == 200
            try:
                for piece in response.iter_raw():
                    got += piece
                complete = True
            except (httpx.RemoteProtocolError, httpx.ReadError):
                complete = False
        assert not complete and len(got) < len(blob), "the body must end short"
        assert bytes(got) == blob[: len(got)], "only the blob's own bytes"
        r = client.get(url)
        assert r.status_code == 200 and r.content == blob
