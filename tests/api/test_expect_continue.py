"""``Expect: 100-continue``: what the registry refuses, it refuses before the body is sent.

"100 Continue" goes out only once the handler asks for the body, after the session is locked
and the chunk checked. A client resuming after an outage with a stale offset learns where the
session stands without sending the chunk (a 416 with Location and Range), and a refusal sent
before the body closes the connection, since the client may or may not send the body then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.api_helpers import (
    ExpectingClient,
    assert_raw_error,
    digest_of,
    image_manifest,
    open_session,
    push_blob,
    session_offset,
)
from tests.support.server import DockyardServer


@pytest.fixture
def conn(registry_server: DockyardServer) -> Iterator[ExpectingClient]:
    address = urlsplit(registry_server.url)
    assert address.hostname is not None and address.port is not None
    connection = ExpectingClient(address.hostname, address.port, timeout=5.0)
    yield connection
    connection.close()


def test_a_chunk_that_does_not_start_at_the_offset_is_refused_before_its_body(
    client: httpx.Client, conn: ExpectingClient
) -> None:
    location = open_session(client, "expect/stale")
    assert client.patch(location, content=b"12345", headers={"Content-Range": "0-4"}).status_code == 202
    conn.send_head("PATCH", location, {"Content-Range": "10-19", "Content-Length": "10"})
    response = conn.read_response()  # no byte of the body was sent
    assert_raw_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["location"] == location
    assert response.headers["range"] == "0-4"
    assert response.headers["connection"].lower() == "close"
    assert session_offset(client, location) == 5


def test_a_chunk_in_order_is_told_to_continue_and_lands(client: httpx.Client, conn: ExpectingClient) -> None:
    data = os.urandom(300_000)
    location = open_session(client, "expect/ok")
    headers = {"Content-Range": f"0-{len(data) - 1}", "Content-Length": str(len(data))}
    conn.send_head("PATCH", location, headers)
    assert conn.read_response().status == 100
    conn.sock.sendall(data)
    accepted = conn.read_response()
    assert accepted.status == 202, accepted.body
    assert accepted.headers["range"] == f"0-{len(data) - 1}"
    assert "close" not in accepted.headers.get("connection", "").lower()
    # the same connection carries the next request
    conn.send_head("PUT", f"{location}?digest={digest_of(data)}", {"Content-Length": "0"})
    created = conn.read_response("PUT")
    assert created.status == 201, created.body
    assert client.get(f"/v2/expect/ok/blobs/{digest_of(data)}").content == data


def test_an_unknown_session_is_refused_before_the_body(conn: ExpectingClient) -> None:
    target = "/v2/expect/none/blobs/uploads/3b1e4c1a-0000-4000-8000-000000000000"
    conn.send_head("PATCH", target, {"Content-Range": "0-9", "Content-Length": "10"})
    response = conn.read_response()
    assert_raw_error(response, 404, "BLOB_UPLOAD_UNKNOWN")
    assert response.headers["connection"].lower() == "close"


def test_a_manifest_declared_too_large_is_refused_before_its_body(conn: ExpectingClient) -> None:
    conn.send_head(
        "PUT",
        "/v2/expect/big/manifests/latest",
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Length": str(1 << 30)},
    )
    response = conn.read_response("PUT")
    assert response.status == 413, response.body
    assert json.loads(response.body)["errors"]
    assert response.headers["connection"].lower() == "close"


def test_a_single_post_and_a_manifest_put_continue_and_are_stored(
    client: httpx.Client, conn: ExpectingClient
) -> None:
    blob = os.urandom(70_000)
    target = f"/v2/expect/single/blobs/uploads/?digest={digest_of(blob)}"
    conn.send_head("POST", target, {"Content-Length": str(len(blob))})
    assert conn.read_response("POST").status == 100
    conn.sock.sendall(blob)
    assert conn.read_response("POST").status == 201
    config = b"{}"
    push_blob(client, "expect/single", config)
    manifest = image_manifest(config, [blob])
    conn.send_head(
        "PUT",
        "/v2/expect/single/manifests/v1",
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Length": str(len(manifest))},
    )
    assert conn.read_response("PUT").status == 100
    conn.sock.sendall(manifest)
    assert conn.read_response("PUT").status == 201
    assert client.get("/v2/expect/single/manifests/v1").content == manifest
