"""The direct-upload exchange as any client would speak it (docs/direct-uploads.md), by hand."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.services import SeaweedFS

MiB = 1 << 20
KIND = "s3-multipart"
DIRECT = "Dockyard-Upload-Direct"
PARTS = "Dockyard-Upload-Parts"


def open_direct(client: httpx.Client, repo: str) -> httpx.Response:
    """POST that asks for a direct session; asserts one was offered."""
    r = client.post(f"/v2/{repo}/blobs/uploads/", headers={DIRECT: KIND})
    assert r.status_code == 202, r.text
    assert r.headers[DIRECT] == KIND
    assert r.headers[PARTS] == r.headers["location"] + "/parts"
    return r


def ask_parts(client: httpx.Client, location: str, sizes: dict[int, int]) -> dict[int, dict[str, Any]]:
    """POST <session>/parts for ``{number: size}``; the answer's parts by number."""
    body = {"parts": [{"number": n, "size": s} for n, s in sizes.items()]}
    r = client.post(location + "/parts", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["kind"] == KIND and doc["expires_in"] > 0
    return {p["number"]: p for p in doc["parts"]}


def put_part(part: dict[str, Any], data: bytes) -> httpx.Response:
    """The part to the store: a plain HTTP PUT, with the headers the registry named, no credentials."""
    assert part["method"] == "PUT"
    assert httpx.URL(part["url"]).host == "127.0.0.1"  # loopback only in tests
    return httpx.put(part["url"], content=data, headers=part["headers"], timeout=60)


def split(data: bytes, size: int = 5 * MiB) -> dict[int, bytes]:
    return {i + 1: data[o : o + size] for i, o in enumerate(range(0, len(data), size))}


def send_parts(client: httpx.Client, location: str, pieces: dict[int, bytes]) -> None:
    urls = ask_parts(client, location, {n: len(p) for n, p in pieces.items()})
    for number, piece in pieces.items():
        r = put_part(urls[number], piece)
        assert r.status_code == 200, r.text


def status(client: httpx.Client, location: str) -> dict[str, Any]:
    r = client.get(location)
    assert r.status_code == 200, r.text
    assert r.headers[DIRECT] == KIND
    doc: dict[str, Any] = r.json()
    return doc


def staged_keys(seaweedfs: SeaweedFS, env: dict[str, str], upload_id: str) -> list[str]:
    """Objects and multipart uploads left under the session's staging prefix."""
    return seaweedfs.keys(f"{env['DOCKYARD_S3__PREFIX']}uploads/{upload_id}/")


def blob_keys(seaweedfs: SeaweedFS, env: dict[str, str]) -> list[str]:
    return seaweedfs.keys(f"{env['DOCKYARD_S3__PREFIX']}blobs/")
