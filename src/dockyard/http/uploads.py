"""Upload sessions (spec: "Pushing blobs"; ARCHITECTURE.md "Upload sessions")."""

from __future__ import annotations

from aiohttp import web

from dockyard.http import auth, direct
from dockyard.http.common import (
    body_stream,
    content_length,
    registry,
    repository,
    session_headers,
)
from dockyard.registry.digests import Digest


def _blob_created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


def _chunk(request: web.Request) -> str | None:
    return request.headers.get("Content-Range") or None


def _has_body(request: web.Request) -> bool:
    length = content_length(request)
    return bool(length) or (length is None and request.body_exists)


async def start_upload(request: web.Request) -> web.Response:
    """POST: open a session, or mount (``?mount=&from=``), or take the whole blob (``?digest=``)."""
    name = repository(request)
    core = registry(request)
    query = request.query
    started = await core.begin_upload(
        name,
        mount=query.get("mount"),
        source=query.get("from") or None,
        digest=query.get("digest"),
        algorithm=query.get("digest-algorithm"),
        length=content_length(request),
        body=body_stream(request) if _has_body(request) else None,
        owner=auth.owner(request),
        may_read=auth.readable(request),
        may_mount_from=lambda source: auth.may_pull(request, source),
        direct=direct.requested_kinds(request),
    )
    if isinstance(started, Digest):
        return _blob_created(name, started)
    headers = session_headers(started)
    headers["Content-Length"] = "0"
    if core.blobs.chunk_min_length:
        headers["OCI-Chunk-Min-Length"] = str(core.blobs.chunk_min_length)
    kind = core.direct_kind(started)
    if kind is not None:
        headers.update(direct.direct_headers(started, kind))
    return web.Response(status=202, headers=headers)


async def upload_status(request: web.Request) -> web.Response:
    """GET: where the session stands (204, Location, Range); a direct session's parts (200, JSON)."""
    core = registry(request)
    session = await core.upload_status(
        repository(request), request.match_info["upload_id"], auth.owner(request)
    )
    if core.direct_kind(session) is not None:
        return direct.status_response(await core.direct_status(session))
    return web.Response(status=204, headers=session_headers(session))


async def append_chunk(request: web.Request) -> web.Response:
    """PATCH: append a chunk (with Content-Range) or a stream (without)."""
    session = await registry(request).append_chunk(
        repository(request),
        request.match_info["upload_id"],
        _chunk(request),
        content_length(request),
        body_stream(request),
        auth.owner(request),
    )
    return web.Response(status=202, headers={**session_headers(session), "Content-Length": "0"})


async def commit_upload(request: web.Request) -> web.Response:
    """PUT ?digest=: the optional last chunk, then verify and publish."""
    name = repository(request)
    digest = await registry(request).commit_upload(
        name,
        request.match_info["upload_id"],
        request.query.get("digest"),
        _chunk(request),
        content_length(request),
        body_stream(request) if _has_body(request) else None,
        auth.owner(request),
        direct.declared_size(request),
    )
    return _blob_created(name, digest)


async def cancel_upload(request: web.Request) -> web.Response:
    await registry(request).cancel_upload(
        repository(request), request.match_info["upload_id"], auth.owner(request)
    )
    return web.Response(status=204)
