"""What every handler shares: the app's keys, request parsing at the edge, common headers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from dockyard.registry.names import parse_name
from dockyard.registry.ports import UploadSession
from dockyard.registry.service import Registry
from dockyard.registry.uploads import range_header

REGISTRY = web.AppKey("registry", Registry)
BODY_CHUNK = 1 << 20


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def repository(request: web.Request) -> str:
    return parse_name(request.match_info["name"])


def body_stream(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (Content-Length or chunked), never buffered whole."""
    return request.content.iter_chunked(BODY_CHUNK)


def content_length(request: web.Request) -> int | None:
    return request.content_length


def upload_location(name: str, upload_id: str) -> str:
    """The session's one URL: the same in every response, for the session's whole life."""
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def session_headers(session: UploadSession) -> dict[str, str]:
    return {
        "Location": upload_location(session.repository, session.id),
        "Range": range_header(session.offset),
        "Docker-Upload-UUID": session.id,
    }


def next_link(path: str, n: int, last: str) -> str:
    return f'<{quote(path)}?{urlencode({"n": n, "last": last})}>; rel="next"'


def json_response(
    data: Any,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> web.Response:
    """JSON with exactly ``content_type`` (the spec: no parameters on Content-Type)."""
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": content_type},
    )
