"""Blobs: GET/HEAD (whole or ranged, spec: "Pulling blobs") and DELETE."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from dockyard.http.common import registry, repository
from dockyard.http.ranges import parse_range
from dockyard.registry.digests import Digest

OCTET_STREAM = "application/octet-stream"


async def get_blob(request: web.Request) -> web.StreamResponse:
    name = repository(request)
    digest = Digest.parse(request.match_info["digest"])
    info = await registry(request).blob_info(name, digest)
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
        return web.Response(status=307, headers={**headers, "Location": info.redirect})
    span = parse_range(request.headers.get("Range"), info.size)
    if info.path is not None:
        # FileResponse sends with sendfile(2); hand it exactly the range we validated.
        clean = CIMultiDict(request.headers)
        clean.pop("Range", None)
        if span is not None:
            clean["Range"] = f"bytes={span[0]}-{span[1]}"
        for conditional in (
            "If-Range",
            "If-Match",
            "If-None-Match",
            "If-Modified-Since",
            "If-Unmodified-Since",
        ):
            clean.pop(conditional, None)
        file_response = web.FileResponse(info.path, headers=headers)
        await file_response.prepare(request.clone(headers=clean))
        return file_response
    start, end = span if span is not None else (0, info.size - 1)
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.content_length = end - start + 1
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
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
