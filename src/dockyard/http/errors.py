"""Errors to responses, in one place: every ``RegistryError`` becomes the spec's JSON body."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockyard.http.common import ClientDisconnected, json_response, response_started, session_headers
from dockyard.registry import errors
from dockyard.registry.uploads import SessionError

log = logging.getLogger("dockyard.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def answer(request: web.Request, exc: Exception) -> web.Response:
    """The response for an exception a handler raised: the spec's JSON body for a registry
    error, a dependency's failure as 503, anything unforeseen as 500 (logged). A redirect or
    other ``HTTPException`` below 400 is re-raised: aiohttp sends it as it is."""
    if isinstance(exc, errors.RegistryError):
        if isinstance(exc, errors.DependencyUnavailable):
            log.warning("%s %s: 503, %s", request.method, request.path, exc)
        return _answer(request, error_response(exc, request.method))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _answer(request, _http_error(exc))
    if isinstance(exc, ConnectionError):
        if isinstance(exc, ClientDisconnected) or _client_gone(request):
            # The client went away (mid-body, usually): its doing, not ours. Nobody reads this.
            log.info("%s %s: connection lost (%s)", request.method, request.path, exc)
            lost = "connection lost before the body ended"
            return error_response(errors.RegistryError(errors.BLOB_UPLOAD_INVALID, message=lost))
        # A connection of ours (database, object store) that no adapter translated: still a
        # part underneath failing, never the client's 400.
        log.warning("%s %s: 503, connection to a dependency failed (%r)", request.method, request.path, exc)
        return _answer(request, error_response(errors.DependencyUnavailable("registry's backend", repr(exc))))
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return _answer(request, error_response(errors.RegistryError(errors.INTERNAL)))


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _answer(request: web.Request, response: web.Response) -> web.Response:
    """``response``, unless the handler's own response has started: an error cannot be said
    inside a body, so the connection is cut and the client sees a short body (never the bytes
    of an error response appended to a blob's)."""
    if response_started(request):
        log.warning(
            "%s %s: failed after the response started; cutting the connection", request.method, request.path
        )
        if request.transport is not None:
            request.transport.abort()
    return response
