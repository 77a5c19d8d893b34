"""Direct uploads' HTTP side (docs/direct-uploads.md): the headers, the parts and status calls."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from dockyard.http import auth
from dockyard.http.common import (
    _send_continue,
    json_response,
    registry,
    repository,
    session_headers,
    upload_location,
)
from dockyard.registry import errors
from dockyard.registry.direct import DirectStatus
from dockyard.registry.ports import UploadSession

#: request: the kinds the client speaks (comma-separated); response: the kind the session is
DIRECT_HEADER = "Dockyard-Upload-Direct"
#: response: where to ask for part URLs (the session's URL + "/parts")
PARTS_HEADER = "Dockyard-Upload-Parts"
#: final PUT of a direct session (optional): the blob's size as the client knows it
SIZE_HEADER = "Dockyard-Upload-Size"
MAX_REQUEST_BYTES = 1 << 20


def requested_kinds(request: web.Request) -> list[str]:
    return [k.strip().lower() for k in request.headers.get(DIRECT_HEADER, "").split(",") if k.strip()]


def direct_headers(session: UploadSession, kind: str) -> dict[str, str]:
    return {DIRECT_HEADER: kind, PARTS_HEADER: upload_location(session.repository, session.id) + "/parts"}


def declared_size(request: web.Request) -> int | None:
    text = request.headers.get(SIZE_HEADER)
    if text is None:
        return None
    if not text.strip().isdigit() or len(text.strip()) > 19:
        raise errors.RegistryError(errors.SIZE_INVALID, message=f"invalid {SIZE_HEADER} {text[:40]!r}")
    return int(text)


def status_response(status: DirectStatus) -> web.Response:
    """GET on a direct session: ``200`` with the parts the store holds (JSON)."""
    session = status.session
    headers = session_headers(session)
    headers["Range"] = f"0-{status.contiguous - 1}"
    headers.update(direct_headers(session, status.kind))
    return json_response(status.as_dict(), headers=headers)


async def request_parts(request: web.Request) -> web.Response:
    """POST <session>/parts: pre-signed URLs for the parts the body names."""
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        raise errors.RegistryError(errors.BLOB_UPLOAD_INVALID, message="the parts request is too large")
    await _send_continue(request)  # the route defers "100 Continue" until the body is wanted
    raw = bytearray()
    while piece := await request.content.read(MAX_REQUEST_BYTES + 1 - len(raw)):
        raw += piece
        if len(raw) > MAX_REQUEST_BYTES:
            raise errors.RegistryError(errors.BLOB_UPLOAD_INVALID, message="the parts request is too large")
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        raise errors.RegistryError(
            errors.BLOB_UPLOAD_INVALID, message="the parts request must be JSON"
        ) from None
    session, urls, expiry = await registry(request).direct_part_urls(
        repository(request), request.match_info["upload_id"], doc, auth.owner(request)
    )
    kind = registry(request).direct_kind(session) or ""
    body = {
        "kind": kind,
        "expires_in": expiry,
        "parts": [
            {"number": u.number, "size": u.size, "method": "PUT", "url": u.url, "headers": u.headers}
            for u in urls
        ],
    }
    headers = {**session_headers(session), **direct_headers(session, kind), "Cache-Control": "no-store"}
    return json_response(body, headers=headers)
