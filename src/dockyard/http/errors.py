"""Errors to responses, in one place: every ``RegistryError`` becomes the spec's JSON body."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockyard.http.common import json_response, session_headers
from dockyard.registry import errors
from dockyard.registry.uploads import SessionError

log = logging.getLogger("dockyard.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(exc: errors.RegistryError, method: str = "GET") -> web.Response:
    headers = dict(exc.headers)
    if isinstance(exc, SessionError):
        headers.update(session_headers(exc.session))
    return json_response(exc.body(), status=exc.status, headers=headers)


def _http_error(exc: web.HTTPException) -> web.Response:
    status = exc.status
    if status == 405:
        code = errors.UNSUPPORTED
    elif status == 413:
        code = errors.MANIFEST_TOO_LARGE
    elif status == 404:
        code = errors.ErrorCode("NAME_UNKNOWN", 404, "no such endpoint")
    else:
        code = errors.ErrorCode("UNSUPPORTED", status, exc.reason)
    return error_response(errors.RegistryError(code, message=exc.reason if status != 404 else None))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except errors.RegistryError as exc:
        response = error_response(exc, request.method)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(exc)
    except ConnectionError as exc:
        # The client went away (mid-body, usually): its doing, not ours. Nobody reads this answer.
        log.info("%s %s: connection lost (%s)", request.method, request.path, exc)
        response = error_response(
            errors.RegistryError(errors.BLOB_UPLOAD_INVALID, message="connection lost before the body ended")
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(errors.RegistryError(errors.INTERNAL))
    if not response.prepared:
        response.headers.update(API_VERSION_HEADER)
    return response
