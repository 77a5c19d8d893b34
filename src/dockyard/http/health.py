"""Health endpoints for load balancers and Kubernetes probes (docs/operations.md).

``/health/live``: the process answers. ``/health/ready``: the database and the blob store
answer, and the node is not shutting down. No credentials needed in any auth mode; the answers
name which part is down, never a host, a path or an error message (those go to the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from dockyard.http.common import REGISTRY, json_response
from dockyard.http.drain import DRAIN
from dockyard.registry.ports import DependencyDown
from dockyard.registry.service import Registry

log = logging.getLogger("dockyard")

READY_TTL = 1.0  # a worker probes its stores at most this often, however often it is asked
PROBE_TIMEOUT = 2.0  # a store that has not answered by then is down, for readiness
_NO_STORE = {"Cache-Control": "no-store"}


class Readiness:
    """Whether the stores answer, remembered for READY_TTL; concurrent asks share one probe."""

    def __init__(self, core: Registry) -> None:
        self._core = core
        self._lock = asyncio.Lock()
        self._checked_at = float("-inf")
        self._state: dict[str, str] = {}

    async def state(self) -> dict[str, str]:
        """``{"database": "ok"|"unavailable", "storage": ...}``."""
        async with self._lock:
            if time.monotonic() - self._checked_at >= READY_TTL:
                database, storage = await asyncio.gather(
                    self._probe("database", self._core.meta.check),
                    self._probe("storage", self._core.blobs.check),
                )
                self._state = {"database": database, "storage": storage}
                self._checked_at = time.monotonic()
            return self._state

    async def _probe(self, part: str, check: Callable[[], Awaitable[None]]) -> str:
        was = self._state.get(part)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await check()
        except TimeoutError:
            if was != "unavailable":
                log.warning("readiness: the %s did not answer within %g s", part, PROBE_TIMEOUT)
            return "unavailable"
        except DependencyDown as exc:
            if was != "unavailable":
                log.warning("readiness: the %s is unavailable: %s", part, exc)
            return "unavailable"
        except Exception:
            if was != "unavailable":
                log.exception("readiness: probing the %s failed", part)
            return "unavailable"
        if was == "unavailable":
            log.info("readiness: the %s answers again", part)
        return "ok"


READINESS = web.AppKey("readiness", Readiness)


def install(app: web.Application) -> None:
    """The readiness probe of the app's core (after ``app[REGISTRY]`` is set)."""
    app[READINESS] = Readiness(app[REGISTRY])


async def live(request: web.Request) -> web.Response:
    """``GET /health/live``: 200 while the process answers (draining included)."""
    return json_response({"status": "live"}, headers=_NO_STORE)


async def ready(request: web.Request) -> web.Response:
    """``GET /health/ready``: 200 when this node should get traffic, else 503 naming why."""
    if request.app[DRAIN].draining:
        body: dict[str, object] = {"status": "unavailable", "draining": True}
    else:
        state = await request.app[READINESS].state()
        down = any(value != "ok" for value in state.values())
        body = {"status": "unavailable" if down else "ready", **state, "draining": False}
    if body["status"] == "ready":
        return json_response(body, headers=_NO_STORE)
    return json_response(body, status=503, headers={**_NO_STORE, "Retry-After": "1"})


def probe_app(main: web.Application) -> web.Application:
    """The probes of ``main`` as an app of their own (``health_listen``): the same readiness
    and drain state, no other route, no access control, no TLS."""
    app = web.Application()
    app[DRAIN] = main[DRAIN]
    app[READINESS] = main[READINESS]
    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/health/live", live)
        app.router.add_route(method, "/health/ready", ready)
    return app
