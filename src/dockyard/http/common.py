"""What every handler shares: the app's keys, request parsing at the edge, common headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import HttpVersion11, web

from dockyard.http.drain import DRAIN
from dockyard.registry import errors
from dockyard.registry.names import parse_name
from dockyard.registry.ports import UploadSession
from dockyard.registry.service import Registry
from dockyard.registry.uploads import range_header

log = logging.getLogger("dockyard.http")

REGISTRY = web.AppKey("registry", Registry)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
#: per event sink (and replication rule): its figures for /metrics (events on only)
EventFigures = Callable[[], Awaitable[dict[str, dict[str, float]]]]
EVENT_FIGURES: web.AppKey[EventFigures] = web.AppKey("event_figures")
HEARTBEAT_SECONDS = 1.0  # while a body stalls, body_stream yields b"" this often
_CONTINUE_PENDING = "dockyard.continue_pending"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STARTED = "dockyard.response_started"
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class ClientDisconnected(ConnectionResetError):
    """The client's connection failed while its request body was read: the client's doing.
    (Every other ``ConnectionError`` is a connection of ours, to a dependency, failing.)"""


def response_started(request: web.Request) -> bool:
    """Whether this request's response has begun to go out (status and headers sent)."""
    return bool(request.get(_STARTED)) or request.writer.output_size > 0


def finish_headers(request: web.Request, response: web.StreamResponse) -> None:
    """What every answer of the API carries, set before it is prepared: the API version (Docker
    clients look for it); while the node drains, ``Connection: close`` (no next request here)."""
    response.headers.update(API_VERSION_HEADER)
    if request.app[DRAIN].draining:
        response.force_close()


async def start_response(request: web.Request, response: web.StreamResponse) -> None:
    """``response.prepare``, remembered: from here on a failure cuts the connection."""
    request[_STARTED] = True
    finish_headers(request, response)
    await response.prepare(request)


async def stream_response(
    request: web.Request, response: web.StreamResponse, body: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Send ``body`` as ``response``'s body. The first piece is read before the headers go out,
    so a store that fails at once is still a clean error (503); a failure after that aborts the
    connection (the client sees a short body and may retry with ``Range``), never an error
    written into the body and never a connection left hanging."""
    pieces = aiter(body)
    try:
        first: bytes | None = await anext(pieces)
    except StopAsyncIteration:
        first = None
    await start_response(request, response)
    try:
        if first is not None:
            await response.write(first)
            async for data in pieces:
                await response.write(data)
    except Exception as exc:
        gone = request.transport is None or request.transport.is_closing()
        log.log(
            logging.INFO if gone else logging.WARNING,
            "%s %s: the body stopped after %d bytes (%r); %s",
            request.method,
            request.path,
            response.body_length,
            exc,
            "the client went away" if gone else "cutting the connection",
        )
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
    await response.write_eof()
    return response


async def defer_continue(request: web.Request) -> None:
    """The ``Expect`` handler of every /v2/ route: "100 Continue" waits until the handler asks
    for the body (``body_stream``). Whatever is refused before that — credentials, an unknown
    session, a chunk that does not start where the session ends, a full repository, a manifest
    declared too large — is answered before the client sends a byte of the body."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown expectation: {expect}")
    if request.version >= HttpVersion11:
        request[_CONTINUE_PENDING] = True


async def _send_continue(request: web.Request) -> None:
    if request.get(_CONTINUE_PENDING):
        request[_CONTINUE_PENDING] = False
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the interim response is not part of the response body


def close_if_body_unasked(request: web.Request, response: web.StreamResponse) -> None:
    """A response sent before the client was told to continue closes the connection: the
    client may or may not send the body now, and the next request on this connection would
    be read from the middle of it (RFC 9110, 10.1.1)."""
    if request.get(_CONTINUE_PENDING) and (request.content_length or request.body_exists):
        response.force_close()


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def repository(request: web.Request) -> str:
    return parse_name(request.match_info["name"])


async def body_stream(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (Content-Length or chunked), never buffered whole.

    A body that stalls longer than the body timeout is cut off (408): a slow client must not
    hold a session and a connection forever. While it stalls, an empty piece comes every
    HEARTBEAT_SECONDS, so that the reader can decide to give up sooner.
    """
    timeout = request.app[BODY_TIMEOUT]
    drain = request.app[DRAIN]
    loop = asyncio.get_running_loop()
    await _send_continue(request)
    last_data = loop.time()
    while True:
        if drain.cut:  # the node stops: what arrived is kept, the client continues elsewhere
            raise errors.RegistryError(errors.SHUTTING_DOWN, headers={"Retry-After": "1"})
        try:
            async with asyncio.timeout(min(HEARTBEAT_SECONDS, timeout)):
                # One piece as the parser fed it (readany() joins what is buffered: a copy of
                # every byte, on the loop).
                data, end_of_http_chunk = await request.content.readchunk()
        except TimeoutError:
            if loop.time() - last_data >= timeout:
                raise errors.RegistryError(
                    errors.BODY_TIMEOUT, message=f"no request body data for {timeout:g} seconds"
                ) from None
            yield b""  # a heartbeat: the reader may give up earlier (Registry._yield_if_wanted)
            continue
        except ConnectionError as exc:
            # The client hung up. Bytes that arrived before it did are still in the stream's
            # buffer (aiohttp raises before handing them over): keep them, then give up.
            tail = _buffered(request.content)
            if tail:
                yield tail
            raise ClientDisconnected(str(exc) or "the client closed the connection") from exc
        if not data:
            # (b"", True) ends a chunk of a chunked body: more may come, unless the stream is
            # over. aiohttp's empty body (one object per process) answers (b"", True) forever
            # once anything read it: looping on that spun the worker on its second empty PATCH.
            if end_of_http_chunk and not request.content.at_eof():
                continue
            return  # (b"", False) is the end of the body
        last_data = loop.time()
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
