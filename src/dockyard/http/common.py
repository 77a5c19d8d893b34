"""What every handler shares: the app's keys, request parsing at the edge, common headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from dockyard.registry import errors
from dockyard.registry.names import parse_name
from dockyard.registry.ports import UploadSession
from dockyard.registry.service import Registry
from dockyard.registry.uploads import range_header

REGISTRY = web.AppKey("registry", Registry)
BODY_TIMEOUT = web.AppKey("body_timeout", float)


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def repository(request: web.Request) -> str:
    return parse_name(request.match_info["name"])


async def body_stream(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (Content-Length or chunked), never buffered whole.

    A body that stalls longer than the body timeout is cut off (408): a slow client must not
    hold a session and a connection forever.
    """
    timeout = request.app[BODY_TIMEOUT]
    while True:
        try:
            async with asyncio.timeout(timeout):
                data = await request.content.readany()
        except TimeoutError:
            raise errors.RegistryError(
                errors.BODY_TIMEOUT, message=f"no request body data for {timeout:g} seconds"
            ) from None
        except ConnectionError:
            # The client hung up. Bytes that arrived before it did are still in the stream's
            # buffer (aiohttp raises before handing them over): keep them, then give up.
            tail = _buffered(request.content)
            if tail:
                yield tail
            raise
        if not data:
            return
        yield data


def _buffered(stream: Any) -> bytes:
    """What an aiohttp stream reader holds but has not handed out (private API; b"" if gone)."""
    try:
        return bytes(stream._read_nowait(-1)) if getattr(stream, "_buffer", None) else b""
    except Exception:
        return b""


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
