"""Blobs: GET/HEAD (whole or ranged, spec: "Pulling blobs") and DELETE."""

from __future__ import annotations

from aiohttp import web

from dockyard.http.common import registry, repository
from dockyard.http.ranges import parse_range
from dockyard.http.sendfile import SendfileResponse
from dockyard.registry.digests import Digest

OCTET_STREAM = "application/octet-stream"


async def get_blob(request: web.Request) -> web.StreamResponse:
    name = repository(request)
    digest = Digest.parse(request.match_info["digest"])
    info = await registry(request).blob_info(name, digest, want_redirect=request.method == "GET")
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000, immutable",
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(info.size)
        return web.Response(status=200, headers=headers)
    if info.redirect is not None:
        # The pre-signed URL expires: no cache may keep this answer.
        return web.Response(
            status=307, headers={**headers, "Location": info.redirect, "Cache-Control": "no-store"}
        )
    span = parse_range(request.headers.get("Range"), info.size)
    start, end = span if span is not None else (0, info.size - 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    status = 206 if span is not None else 200
    if info.path is not None:
        return SendfileResponse(info.path, start, end - start + 1, status=status, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start + 1
    await response.prepare(request)
    async for data in registry(request).read_blob(digest, start, end - start + 1):
        await response.write(data)
    await response.write_eof()
    return response


async def delete_blob(request: web.Request) -> web.Response:
    name = repository(request)
    digest = Digest.parse(request.match_info["digest"])
    await registry(request).delete_blob(name, digest)
    return web.Response(status=202, headers={"Content-Length": "0"})
