"""Helpers for the HTTP API tests: digests, pushes, manifest builders, error checks, raw sockets."""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
NON_DISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
API_VERSION = "registry/2.0"

# The spec's error codes (distribution-spec "Error Codes"): no other code may appear in a body.
SPEC_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def no_server_errors(response: httpx.Response) -> None:
    """An httpx response hook: no request of the suite may get a 5xx."""
    assert response.status_code < 500, (
        f"{response.request.method} {response.request.url} -> {response.status_code}"
    )


def api_client(base_url: str) -> httpx.Client:
    """An httpx client for one server that fails the test on any 5xx."""
    return httpx.Client(base_url=base_url, timeout=30.0, event_hooks={"response": [no_server_errors]})


def error_codes(response: httpx.Response) -> list[str]:
    body = response.read()
    return [e["code"] for e in json.loads(body)["errors"]]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` with the spec's JSON error body naming ``code``; returns the entry."""
    body = response.read()
    assert response.status_code == status, (response.status_code, body[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], doc
    for entry in doc["errors"]:
        assert isinstance(entry.get("code"), str), entry
        assert isinstance(entry.get("message"), str), entry
    assert doc["errors"][0]["code"] == code, doc
    entry: dict[str, Any] = doc["errors"][0]
    return entry


# -- pushes ------------------------------------------------------------------------------------


def push_blob(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    """Single-POST upload; returns the digest."""
    digest = digest_of(data, algorithm)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest


def open_session(client: httpx.Client, repo: str, **params: str) -> str:
    """POST a new upload session; returns its Location."""
    r = client.post(f"/v2/{repo}/blobs/uploads/", params=params)
    assert r.status_code == 202, (r.status_code, r.text)
    location: str = r.headers["location"]
    return location


def session_offset(client: httpx.Client, location: str) -> int:
    """The session's offset, from the ``Range: 0-<last byte>`` of its status."""
    r = client.get(location)
    assert r.status_code == 204, (r.status_code, r.text)
    return range_end(r.headers["range"]) + 1


def range_end(header: str) -> int:
    """The last byte of an upload ``Range: 0-<last>`` header (``0--1`` for an empty session)."""
    start, _, end = header.partition("-")
    assert start == "0", header
    return int(end)


def put_manifest(
    client: httpx.Client, repo: str, reference: str, body: bytes, media_type: str, **params: Any
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}",
        content=body,
        headers={"Content-Type": media_type},
        params=params,
    )


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def dumps(doc: dict[str, Any]) -> bytes:
    """Manifest bytes, deliberately not canonical (indent) so byte-identity is meaningful."""
    return json.dumps(doc, indent=3).encode()


@dataclass
class Image:
    """An image pushed into a repository: its manifest bytes, digest and blobs."""

    manifest: bytes
    digest: str
    media_type: str
    config: bytes
    layers: list[bytes]


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    **extra: Any,
) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
        **extra,
    }
    return dumps(doc)


def push_image(
    client: httpx.Client,
    repo: str,
    reference: str | None = None,
    *,
    seed: str = "",
    media_type: str = OCI_MANIFEST,
    config_type: str | None = None,
    **extra: Any,
) -> Image:
    """Push a config, one layer and a manifest (by ``reference``, or by digest when None)."""
    docker = media_type == DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {repo} {seed}".encode() * 7
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    body = image_manifest(
        config,
        [layer],
        media_type=media_type,
        config_type=config_type or (DOCKER_CONFIG if docker else OCI_CONFIG),
        layer_type=DOCKER_LAYER if docker else OCI_LAYER,
        **extra,
    )
    digest = digest_of(body)
    r = put_manifest(client, repo, reference or digest, body, media_type)
    assert r.status_code == 201, (r.status_code, r.text)
    return Image(body, digest, media_type, config, [layer])


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30.0,
) -> RawResponse:
    """Send one request exactly as written (no URL normalisation) and read the whole answer."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    all_headers = dict(headers or {})
    if body or method in ("PUT", "POST", "PATCH"):
        all_headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return parse_raw_response(b"".join(chunks), method)


def parse_raw_response(data: bytes, method: str = "GET") -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status in (204, 304):
        return RawResponse(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return RawResponse(status, headers, body)
    length = headers.get("content-length")
    return RawResponse(status, headers, rest[: int(length)] if length is not None else rest)


def assert_raw_error(response: RawResponse, status: int | tuple[int, ...], code: str | None = None) -> None:
    """A raw response is a JSON error with one of ``status`` (and ``code`` when given)."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status in statuses, (response.status, response.body[:300])
    doc = response.json()
    assert doc["errors"] and all("code" in e and "message" in e for e in doc["errors"]), doc
    if code is not None:
        assert doc["errors"][0]["code"] == code, doc


class ExpectingClient:
    """One connection that sends a request's head with ``Expect: 100-continue`` and holds the
    body back until the server says to go on, as curl does for large bodies."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.host = f"{host}:{port}"
        self._buffer = b""

    def send_head(self, method: str, target: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}", "Expect: 100-continue"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def read_response(self, method: str = "PATCH") -> RawResponse:
        """The next response, interim (100) or final, with its body."""
        while b"\r\n\r\n" not in self._buffer:
            self._recv()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        response = parse_raw_response(head + b"\r\n\r\n", method)
        if response.status >= 200 and method != "HEAD":
            length = int(response.headers.get("content-length", "0"))
            while len(self._buffer) < length:
                self._recv()
            response.body, self._buffer = self._buffer[:length], self._buffer[length:]
        return response

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def close(self) -> None:
        self.sock.close()
