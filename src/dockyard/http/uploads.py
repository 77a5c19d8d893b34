"""Upload sessions (spec: "Pushing blobs"; ARCHITECTURE.md "Upload sessions")."""

from __future__ import annotations

from aiohttp import web

from dockyard.http import auth
from dockyard.http.common import (
    body_stream,
    content_length,
    registry,
    repository,
    session_headers,
)
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.names import parse_name


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
    """POST: open a session, or mount (``?mount=``), or take the whole blob (``?digest=``)."""
    name = repository(request)
    core = registry(request)
    query = request.query
    mount = query.get("mount")
    if mount is not None:
        source = parse_name(query["from"]) if query.get("from") else None
        digest = Digest.parse(mount)
        # A source the client may not read is treated as one that lacks the blob (no hint).
        if (source is None or auth.may_pull(request, source)) and await core.mount_blob(
            name, digest, source, auth.readable(request)
        ) is not None:
            return _blob_created(name, digest)
        # spec: a registry "unable to mount the requested blob ... SHOULD return a 202"
    digest_param = query.get("digest")
    if digest_param is not None and mount is None:
        digest = await core.upload_whole(
            name, digest_param, content_length(request), body_stream(request), auth.owner(request)
        )
        return _blob_created(name, digest)
    if _has_body(request):
        raise errors.RegistryError(
            errors.BLOB_UPLOAD_INVALID, message="a POST without ?digest= takes no body"
        )
    session = await core.start_upload(name, query.get("digest-algorithm"), auth.owner(request))
    headers = session_headers(session)
    headers["Content-Length"] = "0"
    if core.blobs.chunk_min_length:
        headers["OCI-Chunk-Min-Length"] = str(core.blobs.chunk_min_length)
    return web.Response(status=202, headers=headers)


async def upload_status(request: web.Request) -> web.Response:
    """GET: where the session stands (204, Location, Range)."""
    session = await registry(request).upload_status(
        repository(request), request.match_info["upload_id"], auth.owner(request)
    )
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
    )
    return _blob_created(name, digest)


async def cancel_upload(request: web.Request) -> web.Response:
    await registry(request).cancel_upload(
        repository(request), request.match_info["upload_id"], auth.owner(request)
    )
    return web.Response(status=204)
