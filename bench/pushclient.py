"""A small async OCI push client (aiohttp): monolithic POST+PUT and chunked PATCH uploads.

Bodies are streamed from a ``Source`` (a file or a generator), never held whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urljoin

import aiohttp
from sources import Source

OCTET = "application/octet-stream"


class PushError(RuntimeError):
    pass


def new_session(connections: int = 64, ssl_context: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    """``ssl_context``: what HTTPS servers are checked with (one trusting a bench's certificate)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False, ssl=ssl_context or True),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        auto_decompress=False,
    )


async def _stream(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    for data in pieces:
        yield data


async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
    if resp.status != status:
        body = (await resp.text())[:300]
        raise PushError(f"{what}: HTTP {resp.status} (wanted {status}): {body}")


def _with_query(base: str, location: str, query: str) -> str:
    url = urljoin(base, location)
    return url + ("&" if "?" in url else "?") + query


async def open_session(http: aiohttp.ClientSession, base: str, repo: str) -> str:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        await _expect(resp, 202, "POST upload")
        return urljoin(base, resp.headers["Location"])


async def push_monolithic(http: aiohttp.ClientSession, base: str, repo: str, source: Source) -> float:
    """POST, then PUT ?digest= with the whole body; seconds from the POST to the 201."""
    digest = source.digest  # computed before the clock starts
    t0 = time.perf_counter()
    location = await open_session(http, base, repo)
    headers = {"Content-Type": OCTET, "Content-Length": str(source.size)}
    async with http.put(
        _with_query(base, location, f"digest={digest}"), data=_stream(source.chunks()), headers=headers
    ) as resp:
        await _expect(resp, 201, "PUT upload")
    return time.perf_counter() - t0


async def push_chunked(
    http: aiohttp.ClientSession, base: str, repo: str, source: Source, chunk_size: int
) -> float:
    """POST, PATCH with Content-Range per chunk, then PUT ?digest= with no body."""
    digest = source.digest
    t0 = time.perf_counter()
    location = await open_session(http, base, repo)
    for start in range(0, source.size, chunk_size):
        end = min(start + chunk_size, source.size)
        headers = {
            "Content-Type": OCTET,
            "Content-Length": str(end - start),
            "Content-Range": f"{start}-{end - 1}",
        }
        async with http.patch(location, data=_stream(source.chunks(start, end)), headers=headers) as resp:
            await _expect(resp, 202, f"PATCH {start}-{end - 1}")
            location = urljoin(base, resp.headers["Location"])
    async with http.put(
        _with_query(base, location, f"digest={digest}"), headers={"Content-Length": "0"}
    ) as resp:
        await _expect(resp, 201, "PUT (commit)")
    return time.perf_counter() - t0


async def push_small(http: aiohttp.ClientSession, base: str, repo: str, data: bytes, digest: str) -> None:
    location = await open_session(http, base, repo)
    async with http.put(
        _with_query(base, location, f"digest={digest}"), data=data, headers={"Content-Type": OCTET}
    ) as resp:
        await _expect(resp, 201, "PUT small blob")


async def push_manifest(
    http: aiohttp.ClientSession, base: str, repo: str, tag: str, seed: int
) -> tuple[bytes, str]:
    """An image manifest (config + one small layer) pushed by tag; returns its bytes and digest."""

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "seed": seed}
    ).encode()
    layer = f"dockyard bench layer {seed}\n".encode() * 64
    await push_small(http, base, repo, config, sha(config))
    await push_small(http, base, repo, layer, sha(layer))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
            "annotations": {"org.opencontainers.image.title": "dockyard bench"},
        },
        indent=3,
    ).encode()
    async with http.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    ) as resp:
        await _expect(resp, 201, "PUT manifest")
    return manifest, sha(manifest)
