"""Upload sessions (spec: "Pushing a blob in chunks"; ARCHITECTURE.md "Upload sessions")."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api_helpers import (
    assert_error,
    assert_raw_error,
    digest_of,
    open_session,
    range_end,
    raw_request,
    session_offset,
)
from tests.support.server import DockyardServer
from tests.support.staging import session_writer_active, staged_bytes


def _assert_session_headers(r: httpx.Response, location: str, uuid: str, offset: int) -> None:
    assert r.headers["location"] == location, r.headers
    assert r.headers["docker-upload-uuid"] == uuid, r.headers
    assert r.headers["range"] == f"0-{offset - 1}", r.headers


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
    )


def test_post_returns_202_with_location_and_upload_uuid(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    uuid = r.headers["docker-upload-uuid"]
    assert uuid
    assert r.headers["location"].startswith(f"/v2/{repo}/blobs/uploads/")
    assert uuid in r.headers["location"]


def test_location_is_identical_in_every_response_of_the_session(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location, uuid = r.headers["location"], r.headers["docker-upload-uuid"]
    data = os.urandom(3_000)
    seen = [location]
    for start in (0, 1_000, 2_000):
        r = _patch(client, location, data[start : start + 1_000], start)
        assert r.status_code == 202
        seen.append(r.headers["location"])
        assert r.headers["docker-upload-uuid"] == uuid
        r = client.get(location)
        assert r.status_code == 204
        seen.append(r.headers["location"])
    r = _patch(client, location, b"x", 0)  # out of order: the 416 names the same session too
    assert r.status_code == 416
    seen.append(r.headers["location"])
    assert set(seen) == {location}


def test_get_on_session_returns_204_with_location_range_and_uuid(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location, uuid = r.headers["location"], r.headers["docker-upload-uuid"]
    assert _patch(client, location, b"a" * 1234, 0).status_code == 202
    r = client.get(location)
    assert r.status_code == 204
    assert r.content == b""
    _assert_session_headers(r, location, uuid, 1234)


def test_empty_session_reports_range_0_to_minus_1(client: httpx.Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.headers["range"] == "0--1"
    r = client.get(r.headers["location"])
    assert r.status_code == 204
    assert r.headers["range"] == "0--1"


def test_single_byte_session_reports_range_0_to_0(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    assert _patch(client, location, b"x", 0).status_code == 202
    assert client.get(location).headers["range"] == "0-0"


@pytest.mark.parametrize("start", [0, 500, 2_000])
def test_patch_out_of_order_returns_416_with_location_range_and_uuid(
    client: httpx.Client, repo: str, start: int
) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location, uuid = r.headers["location"], r.headers["docker-upload-uuid"]
    assert _patch(client, location, b"a" * 1_000, 0).status_code == 202
    r = _patch(client, location, b"b" * 100, start)
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    _assert_session_headers(r, location, uuid, 1_000)
    assert session_offset(client, location) == 1_000  # the refused chunk left nothing behind


def test_put_with_out_of_order_final_chunk_returns_416_with_session_headers(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(2_000)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location, uuid = r.headers["location"], r.headers["docker-upload-uuid"]
    assert _patch(client, location, data[:1_000], 0).status_code == 202
    r = client.put(
        location,
        params={"digest": digest_of(data)},
        content=data[1_500:],
        headers={"Content-Range": f"1500-{len(data) - 1}"},
    )
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    _assert_session_headers(r, location, uuid, 1_000)
    assert_error(client.get(f"/v2/{repo}/blobs/{digest_of(data)}"), 404, "BLOB_UNKNOWN")


def test_after_416_the_client_continues_at_the_reported_offset_and_finishes(
    client: httpx.Client, repo: str
) -> None:
    data = os.urandom(6_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    assert _patch(client, location, data[:2_000], 0).status_code == 202
    # the client thinks it already sent 4000 bytes
    r = _patch(client, location, data[4_000:], 4_000)
    assert r.status_code == 416
    resume = range_end(r.headers["range"]) + 1
    assert resume == 2_000
    r = _patch(client, r.headers["location"], data[resume:5_000], resume)
    assert r.status_code == 202
    r = client.put(
        location, params={"digest": digest}, content=data[5_000:], headers={"Content-Range": "5000-5999"}
    )
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_patch_whose_content_length_disagrees_with_content_range_is_refused(
    client: httpx.Client, repo: str
) -> None:
    location = open_session(client, repo)
    r = client.patch(location, content=b"x" * 10, headers={"Content-Range": "0-99"})
    assert r.status_code in (400, 416), r.text
    assert session_offset(client, location) == 0


def test_patch_with_malformed_content_range_returns_400_or_416(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    for bad in ("garbage", "5-2", "bytes=a-b"):
        r = client.patch(location, content=b"abc", headers={"Content-Range": bad})
        assert r.status_code in (400, 416), (bad, r.status_code)
        assert r.json()["errors"]
    assert session_offset(client, location) == 0


def test_delete_session_returns_204_then_get_returns_404_upload_unknown(
    client: httpx.Client, repo: str
) -> None:
    location = open_session(client, repo)
    assert _patch(client, location, b"some bytes", 0).status_code == 202
    assert client.delete(location).status_code == 204
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(_patch(client, location, b"more", 10), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        client.put(location, params={"digest": digest_of(b"some bytes")}), 404, "BLOB_UPLOAD_UNKNOWN"
    )


def test_finished_session_is_gone(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    assert client.put(location, params={"digest": digest_of(b"done")}, content=b"done").status_code == 201
    assert_error(client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_session_used_through_another_repositorys_url_returns_404(client: httpx.Client, repo: str) -> None:
    location = open_session(client, repo)
    uuid = location.rsplit("/", 1)[1]
    other = f"/v2/{repo}-other/blobs/uploads/{uuid}"
    assert_error(client.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(_patch(client, other, b"abc", 0), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        client.put(other, params={"digest": digest_of(b"abc")}, content=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert_error(client.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert session_offset(client, location) == 0  # the real session is untouched


@pytest.mark.parametrize(
    "upload_id",
    ["not-a-uuid", "..", "%2e%2e", "..%2F..%2Fetc", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "0" * 5000, "%00"],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_garbage_upload_id_returns_404_never_500(
    registry_server: DockyardServer, repo: str, upload_id: str, method: str
) -> None:
    target = f"/v2/{repo}/blobs/uploads/{upload_id}"
    if method == "PUT":
        target += f"?digest={digest_of(b'abc')}"
    r = raw_request(
        "127.0.0.1", registry_server.port, method, target, body=b"abc" if method != "GET" else b""
    )
    assert_raw_error(r, 404)


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_dot_segment_upload_path_returns_404_never_500(
    registry_server: DockyardServer, repo: str, method: str
) -> None:
    r = raw_request("127.0.0.1", registry_server.port, method, f"/v2/{repo}/blobs/uploads/../../etc")
    assert_raw_error(r, (400, 404))


def _drop_mid_body(port: int, location: str, sent: bytes, declared: int) -> None:
    """PATCH with ``Content-Length: declared`` but send only ``sent``, then close the connection.

    The bytes go out in a few paced pieces, so the server is usually mid-stream when the
    connection drops (the assertions hold whatever it managed to take in).
    """
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        step = max(1, len(sent) // 4)
        for i in range(0, len(sent), step):
            sock.sendall(sent[i : i + step])
            time.sleep(0.05)
        sock.shutdown(socket.SHUT_WR)


def _continue_until_accepted(client: httpx.Client, location: str, data: bytes, limit: int) -> int:
    """Resume as a client would: ask where the session stands, send the rest from there.

    The server may still be finishing the dropped request; it then answers 416 with where the
    session stands, and the client asks again.
    """
    deadline = time.monotonic() + 60
    while True:
        offset = session_offset(client, location)
        assert offset <= limit, f"session claims {offset} bytes, only {limit} were sent"
        r = _patch(client, location, data[offset:], offset)
        if r.status_code == 202:
            assert r.headers["range"] == f"0-{len(data) - 1}"
            return offset
        assert r.status_code == 416, r.text
        assert time.monotonic() < deadline, "the session never settled after the dropped PATCH"
        time.sleep(0.05)


def test_patch_dropped_mid_body_leaves_a_consistent_offset_and_the_upload_can_finish(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    data = os.urandom(1_000_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    assert _patch(client, location, data[:100_000], 0).status_code == 202
    _drop_mid_body(registry_server.port, location, data[100_000:400_000], 900_000)
    resumed_at = _continue_until_accepted(client, location, data, 400_000)
    assert 100_000 <= resumed_at <= 400_000
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    got = client.get(f"/v2/{repo}/blobs/{digest}")
    assert digest_of(got.content) == digest


def test_streamed_patch_dropped_mid_body_keeps_a_prefix_of_what_was_sent(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    data = os.urandom(1_000_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    uuid = location.rsplit("/", 1)[1]
    _drop_mid_body(registry_server.port, location, data[:300_000], len(data))
    resumed_at = _continue_until_accepted(client, location, data, 300_000)
    # the first resumed_at bytes were a prefix of what was sent
    assert staged_bytes(registry_server, uuid) in (data, None)
    assert resumed_at <= 300_000
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    assert digest_of(client.get(f"/v2/{repo}/blobs/{digest}").content) == digest


def test_put_dropped_mid_body_publishes_nothing_and_the_session_goes_on(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    data = os.urandom(1_000_000)
    digest = digest_of(data)
    location = open_session(client, repo)
    head = (
        f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: 127.0.0.1:{registry_server.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", registry_server.port), timeout=10) as sock:
        sock.sendall(head)
        for i in range(0, 400_000, 100_000):
            sock.sendall(data[i : i + 100_000])
            time.sleep(0.05)
        sock.shutdown(socket.SHUT_WR)
    _continue_until_accepted(client, location, data, 400_000)
    assert_error(client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")  # nothing half-written
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    assert digest_of(client.get(f"/v2/{repo}/blobs/{digest}").content) == digest


class _Trickle:
    """Sends a body on, 64 bytes every 0.2 s, from ``at`` until ``stop`` (which says where it got)."""

    def __init__(self, sock: socket.socket, data: bytes, at: int) -> None:
        self.sock, self.data, self.at = sock, data, at
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.2) and self.at + 64 < len(self.data):
            self.sock.sendall(self.data[self.at : self.at + 64])
            self.at += 64

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.at


def test_second_writer_while_a_patch_streams_gets_416_with_session_headers(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    data = os.urandom(600_000)
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    location, uuid = r.headers["location"], r.headers["docker-upload-uuid"]
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1:{registry_server.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", registry_server.port), timeout=10) as sock:
        sock.sendall(head + data[:200_000])
        # Wait until the streaming PATCH holds the session's writer lock.
        deadline = time.monotonic() + 60
        while not session_writer_active(registry_server, uuid):
            assert time.monotonic() < deadline, "the streaming PATCH never took the session"
            time.sleep(0.02)
        # The body keeps moving meanwhile, however long the refusals take on a busy machine:
        # a holder whose body stalls past the takeover delay would rightly yield to them.
        sent = _Trickle(sock, data, 200_000)
        try:
            r = client.patch(location, content=b"late", headers={"Content-Range": "0-3"})
            assert_error(r, 416, "BLOB_UPLOAD_INVALID")
            _assert_session_headers(r, location, uuid, 0)
            r = client.put(location, params={"digest": digest}, content=b"x")
            assert r.status_code == 416
            _assert_session_headers(r, location, uuid, 0)
            assert client.delete(location).status_code == 416
        finally:
            at = sent.stop()
        sock.sendall(data[at:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            assert piece, "the server closed the connection without answering"
            answer += piece
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    assert session_offset(client, location) == len(data)
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_client_disconnect_mid_patch_is_not_treated_as_a_server_error(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    """A client that goes away mid-body is the client's doing: no 500, no 'unhandled error' traceback."""
    data = os.urandom(400_000)
    location = open_session(client, repo)
    _drop_mid_body(registry_server.port, location, data[:200_000], len(data))
    _continue_until_accepted(client, location, data, 200_000)
    assert client.put(location, params={"digest": digest_of(data)}).status_code == 201
    log = registry_server.log()
    assert f"unhandled error on PATCH {location}" not in log, log[log.find(location) - 200 :][:3000]


def test_patch_body_shorter_than_its_content_range_leaves_a_truthful_session(
    client: httpx.Client, repo: str
) -> None:
    location = open_session(client, repo)

    def short_body() -> Iterator[bytes]:
        yield b"0123456789"

    r = client.patch(location, content=short_body(), headers={"Content-Range": "0-99"})
    assert r.status_code in (202, 400, 416), r.text
    offset = session_offset(client, location)
    if r.status_code == 202:
        assert r.headers["range"] == f"0-{offset - 1}"
    assert offset in (0, 10)
    r = _patch(client, location, b"0123456789abcdef"[offset:], offset)
    assert r.status_code == 202
    r = client.put(location, params={"digest": digest_of(b"0123456789abcdef")})
    assert r.status_code == 201, r.text


def test_empty_patches_answer_every_time_and_a_broken_chunked_patch_lets_go_of_the_session(
    client: httpx.Client, registry_server: DockyardServer, repo: str
) -> None:
    """Empty PATCHes (clients probe a busy session with them) answer at once, however many a
    worker has seen; a chunked PATCH whose framing breaks lets go of its session. (aiohttp's empty
    body is one object per process: read once, it then said "a chunk ended, more may come"
    forever, and the worker spun on its second empty PATCH, memory growing by gigabytes.)"""
    data = os.urandom(10)
    for _ in range(6):  # connections land on either worker
        location = open_session(client, repo)
        assert _patch(client, location, data[:4], 0).status_code == 202
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1:{registry_server.port}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", registry_server.port), timeout=10) as sock:
            sock.sendall(head + b"5\r\nabcdefgh\r\n")
        deadline = time.monotonic() + 60
        while (r := client.patch(location, content=b"")).status_code == 416:
            assert time.monotonic() < deadline, "the broken PATCH never let go of the session"
            time.sleep(0.05)
        assert r.status_code == 202, r.text
        assert r.headers["range"] == "0-3"
        with httpx.Client(base_url=registry_server.url, timeout=30) as fresh:  # the other worker too
            assert fresh.patch(location, content=b"").headers["range"] == "0-3"
        assert _patch(client, location, data[4:], 4).status_code == 202
        r = client.put(location, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
