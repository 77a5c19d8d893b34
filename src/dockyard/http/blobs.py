"""Blobs: GET/HEAD (whole or ranged, spec: "Pulling blobs") and DELETE."""

from __future__ import annotations

from aiohttp import web

from dockyard.http.common import registry, repository, stream_response
from dockyard.http.ranges import parse_range
from dockyard.http.sendfile import SendfileResponse
from dockyard.registry.digests import Digest
from dockyard.registry.service import IncomingBlob

OCTET_STREAM = "application/octet-stream"


async def get_blob(request: web.Request) -> web.StreamResponse:
    name = repository(request)
    digest = Digest.parse(request.match_info["digest"])
    get = request.method == "GET"
    info = await registry(request).blob_info(name, digest, want_redirect=get, want_bytes=get)
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000, immutable",
    }
    if info.incoming is not None:
        if "Range" not in request.headers:
            return await _stream_incoming(request, info.incoming, info.size, headers)
        # A range of a blob still arriving from the upstream: served once all of it is stored.
        await info.incoming.stored()
        info = await registry(request).blob_info(name, digest, want_redirect=True)
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
    return await stream_response(
        request, response, registry(request).read_blob(digest, start, end - start + 1)
    )


async def delete_blob(request: web.Request) -> web.Response:
    name = repository(request)
    digest = Digest.parse(request.match_info["digest"])
    await registry(request).delete_blob(name, digest)
    return web.Response(status=202, headers={"Content-Length": "0"})


async def _stream_incoming(
    request: web.Request, incoming: IncomingBlob, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """A blob streamed as it arrives from the upstream (pull-through cache).

    The status goes out with the first piece, before the digest can be checked. A blob that then
    fails verification (or the store, or the upstream) cannot be answered with an error any more:
    the connection is cut before its last piece instead, so the client sees a short body, never a
    complete wrong one.
    """
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    try:
        return await stream_response(request, response, incoming.stream())
    finally:
        incoming.release()
