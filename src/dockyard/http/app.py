"""The app factory: builds the adapters the settings name, the core over them, and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from dockyard.clock import wall_clock
from dockyard.gc import collect
from dockyard.http import auth, blobs, browse, direct, discovery, health, manifests, replication_page, uploads
from dockyard.http.common import (
    BODY_TIMEOUT,
    EVENT_FIGURES,
    REGISTRY,
    close_if_body_unasked,
    defer_continue,
    finish_headers,
)
from dockyard.http.drain import DRAIN, Drain
from dockyard.http.errors import Handler, answer
from dockyard.http.metrics import REQUEST_METRICS, RequestMetrics
from dockyard.metadata.store import SqlMetadataStore
from dockyard.registry.pullthrough import PullThroughRegistry
from dockyard.registry.service import Registry
from dockyard.wiring import build_background, build_registry

if TYPE_CHECKING:
    from dockyard.config import Settings

log = logging.getLogger("dockyard")

# The /v2/ route table, top to bottom. ``name`` may hold slashes, so the more specific
# upload routes come before the blob routes.
NAME = "{name:[^{}]+?}"
ROUTES: list[tuple[str, str, Handler, str | None]] = [
    # method, path, handler, what access control asks for: None (any authenticated client),
    # "catalog", or an action on the route's repository
    ("GET", "/v2/", discovery.api_version, None),
    ("HEAD", "/v2/", discovery.api_version, None),
    ("GET", "/v2/_catalog", discovery.list_repositories, "catalog"),
    # Pulls' manifests first: aiohttp tries the /v2/{name}/... patterns in this order, and a
    # path can match only one of manifests and tags/list (a reference holds no slash).
    ("GET", f"/v2/{NAME}/manifests/{{reference}}", manifests.get_manifest, "pull"),
    ("HEAD", f"/v2/{NAME}/manifests/{{reference}}", manifests.get_manifest, "pull"),
    ("PUT", f"/v2/{NAME}/manifests/{{reference}}", manifests.put_manifest, "push"),
    ("DELETE", f"/v2/{NAME}/manifests/{{reference}}", manifests.delete_manifest, "delete"),
    ("GET", f"/v2/{NAME}/tags/list", discovery.list_tags, "pull"),
    ("POST", f"/v2/{NAME}/blobs/uploads/", uploads.start_upload, "push"),
    ("POST", f"/v2/{NAME}/blobs/uploads", uploads.start_upload, "push"),
    ("POST", f"/v2/{NAME}/blobs/uploads/{{upload_id}}/parts", direct.request_parts, "push"),  # extension
    ("GET", f"/v2/{NAME}/blobs/uploads/{{upload_id}}", uploads.upload_status, "push"),
    ("PATCH", f"/v2/{NAME}/blobs/uploads/{{upload_id}}", uploads.append_chunk, "push"),
    ("PUT", f"/v2/{NAME}/blobs/uploads/{{upload_id}}", uploads.commit_upload, "push"),
    ("DELETE", f"/v2/{NAME}/blobs/uploads/{{upload_id}}", uploads.cancel_upload, "push"),
    ("GET", f"/v2/{NAME}/blobs/{{digest}}", blobs.get_blob, "pull"),
    ("HEAD", f"/v2/{NAME}/blobs/{{digest}}", blobs.get_blob, "pull"),
    ("DELETE", f"/v2/{NAME}/blobs/{{digest}}", blobs.delete_blob, "delete"),
    ("GET", f"/v2/{NAME}/referrers/{{digest}}", discovery.list_referrers, "pull"),
    # extensions
    ("DELETE", f"/v2/_dockyard/repositories/{NAME}", manifests.delete_repository, "delete"),
    ("GET", "/metrics", discovery.metrics, "metrics"),
    # probes for load balancers and Kubernetes: no credentials, nothing leaked (docs/operations.md)
    ("GET", "/health/live", health.live, "public"),
    ("HEAD", "/health/live", health.live, "public"),
    ("GET", "/health/ready", health.ready, "public"),
    ("HEAD", "/health/ready", health.ready, "public"),
]

# The pages for people browsing (docs/browsing.md), under the API's access rules: the list is
# the catalog, filtered the same way; a repository's pages need pull on it. Only with ``ui``.
# A manifest page's URL is tried first: a repository page's ``name`` would swallow it.
BROWSE_ROUTES: list[tuple[str, str, Handler, str | None]] = [
    ("GET", "/", browse.home, "public"),
    ("GET", "/ui", browse.home, "public"),
    ("GET", "/ui/", browse.list_repositories, "catalog"),
    ("GET", f"/ui/r/{NAME}/manifests/{{reference}}", browse.show_manifest, "pull"),
    ("GET", f"/ui/r/{NAME}", browse.show_repository, "pull"),
    ("GET", "/ui/replication", replication_page.show_replication, "metrics"),
    ("GET", "/ui/operations", browse.operations, "admin"),
    ("GET", "/ui/{rest:.*}", browse.not_found, "public"),
]


async def _gc_loop(core: Registry, settings: Settings) -> None:
    """Scheduled collections; the collector's lock keeps workers and nodes from overlapping."""
    while True:
        await asyncio.sleep(settings.gc.interval_seconds)
        try:
            await collect(core, settings.gc)
        except Exception:
            log.exception("scheduled garbage collection failed")


async def _purge_loop(core: Registry, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            purged = await core.purge_stale_uploads()
            if purged:
                log.info("purged %d stale upload session(s)", purged)
        except Exception:
            log.exception("purging stale upload sessions failed")


def _event_figures(
    meta: SqlMetadataStore, settings: Settings
) -> Callable[[], Awaitable[dict[str, dict[str, float]]]]:
    """Per configured sink and replication rule (and any other the queue still holds)."""
    names = [s.name for s in settings.events.sinks] + [
        f"replication.{r.name}" for r in settings.replication.rules
    ]
    names += [f"sync.{r.name}" for r in settings.replication.sync]

    clock = wall_clock()

    async def figures() -> dict[str, dict[str, float]]:
        found = await meta.event_log().sink_figures(clock())
        for name in names:
            found.setdefault(name, {})
        return found

    return figures


def _front(request_metrics: RequestMetrics) -> Middleware:
    """The outermost middleware, one where there were four (each layer of aiohttp's chain costs a
    coroutine and a partial on every request, a pull's included): errors to responses (pages on
    the pages' routes, access control's errors included), the connection closed when a body was
    never asked for, and the request counted with the status the client gets. An exception that
    escapes (a redirect, a cancelled request) is counted with its status, or as the 500 aiohttp
    sends."""

    @web.middleware
    async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = request_metrics.started()
        status = 500
        response: web.StreamResponse | None = None
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                response = browse.error_as_page(request, exc) or answer(request, exc)
            close_if_body_unasked(request, response)
            if not response.prepared:  # (a streamed answer got them when it started)
                finish_headers(request, response)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect, re-raised by answer()
            status = exc.status
            raise
        finally:
            request_metrics.finished(request, response, status, started)

    return front


def create_app(settings: Settings) -> web.Application:
    """A dockyard application for ``settings``; nothing global, so tests can build many."""
    route_names: dict[web.AbstractRoute, str] = {}  # filled below, once every route is added
    request_metrics = RequestMetrics(route_names)
    middlewares = [_front(request_metrics)]
    if settings.auth.mode != "none":  # (without access control it would only pass requests on)
        middlewares.append(auth.auth_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=settings.manifest_max_bytes)
    app[REQUEST_METRICS] = request_metrics
    route_access: dict[web.AbstractRoute, str | None] = {}
    for method, path, handler, access in ROUTES:
        route = app.router.add_route(method, path, handler, expect_handler=defer_continue)
        route_access[route] = access
    browser_routes = set()
    for method, path, handler, access in BROWSE_ROUTES if settings.ui else []:
        route = app.router.add_route(method, path, handler)
        route_access[route] = access
        browser_routes.add(route)
    app[auth.ROUTE_ACCESS] = route_access
    app[auth.BROWSER_ROUTES] = frozenset(browser_routes)
    core = build_registry(settings)
    app[REGISTRY] = core
    app[manifests.MANIFEST_HEADERS] = manifests.ManifestHeaders()
    app[BODY_TIMEOUT] = settings.body_timeout_seconds
    app[DRAIN] = Drain()
    health.install(app)
    if (settings.events_enabled or settings.replication.sync) and isinstance(core.meta, SqlMetadataStore):
        app[EVENT_FIGURES] = _event_figures(core.meta, settings)
    auth.install(app, settings)
    for route in app.router.routes():
        # A metrics label: the handler's name, never the path (it holds repository names).
        prefix = "ui_" if route in browser_routes else ""
        route_names[route] = prefix + getattr(route.handler, "__name__", "other")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await core.meta.open()
        tasks = [asyncio.create_task(_purge_loop(core, settings.upload_purge_interval_seconds))]
        if isinstance(core.meta, SqlMetadataStore):
            tasks += [asyncio.create_task(job) for job in build_background(settings, core.meta)]
        if settings.gc.interval_seconds > 0:
            tasks.append(asyncio.create_task(_gc_loop(core, settings)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if isinstance(core, PullThroughRegistry):
            await core.close_upstream()
        await core.meta.close()
        await core.blobs.close()

    app.cleanup_ctx.append(lifecycle)

    return app
