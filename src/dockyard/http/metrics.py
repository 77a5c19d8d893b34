"""Per-request metrics (docs/reference/metrics.md): counts, durations and bytes by route, summed over workers.

``prometheus_client`` picks how it stores values (in this process, or in files that all workers
share) when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``. So this module imports it
only inside functions: the ``serve`` parent sets the directory (``use_shared_directory``) before
anything imports it, and the workers it forks inherit the choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MULTIPROCESS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Any other method (a client may send anything) is labelled "other": labels stay a small set.
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
IN_FLIGHT_PERIOD = 1.0


def use_shared_directory(path: Path) -> None:
    """Make every process forked from now on record into files under ``path`` (emptied here),
    so that a scrape answered by any worker sums all of them. Call before the first import of
    ``prometheus_client``: it reads the choice once, at import."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV[0]] = str(path)
    os.environ.pop(MULTIPROCESS_ENV[1], None)


def use_this_process_only() -> None:
    """One process serves: values live in memory (an inherited directory setting is dropped)."""
    for name in MULTIPROCESS_ENV:
        os.environ.pop(name, None)


def process_exited(pid: int) -> None:
    """Forget a dead worker's in-flight gauge; its counters and histograms stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _collect_from_workers(registry: CollectorRegistry, path: str) -> None:
    """Register prometheus_client's multiprocess collector, minus the files a starting worker has
    created but not yet sized: reading one of those (0 bytes) raised, and failed the scrape."""
    from prometheus_client import multiprocess

    class WorkersCollector(multiprocess.MultiProcessCollector):
        def collect(self) -> Any:
            files = []
            for name in glob.glob(os.path.join(path, "*.db")):
                with contextlib.suppress(OSError):  # gone meanwhile: a dead worker's gauge file
                    if os.path.getsize(name) >= 8:  # the header: how much of the file is used
                        files.append(name)
            return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]

    WorkersCollector(registry, path=path)  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class _Series:
    """The label-bound children of one (method, route, status): ``.labels()`` once, not per request."""

    requests: Counter
    duration: Histogram
    request_bytes: Counter
    response_bytes: Counter


class RequestMetrics:
    """The per-request families of one app, and the text of all of them for a scrape."""

    def __init__(self, route_names: dict[web.AbstractRoute, str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._route_names = route_names
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._active = 0  # requests this process is handling now
        directory = os.environ.get(MULTIPROCESS_ENV[0]) or os.environ.get(MULTIPROCESS_ENV[1])
        # Not auto_describe: registering the shared collector would read every worker's files
        # then, while other workers may be creating theirs.
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self._shared = bool(directory)
        if directory:
            # Values go to this process's files; a scrape reads every worker's files.
            _collect_from_workers(self.registry, directory)
            own = None
        else:
            own = self.registry
        self._requests = Counter(
            "dockyard_http_requests",
            "HTTP requests answered, by method, route (the handler) and status",
            ["method", "route", "status"],
            registry=own,
        )
        self._duration = Histogram(
            "dockyard_http_request_duration_seconds",
            "time from a request's arrival until its response is ready to send (a blob's body, "
            "sent with sendfile, goes out after)",
            ["method", "route"],
            buckets=BUCKETS,
            registry=own,
        )
        self._request_bytes = Counter(
            "dockyard_http_request_bytes",
            "request body bytes received",
            ["route"],
            registry=own,
        )
        self._response_bytes = Counter(
            "dockyard_http_response_bytes",
            "response body bytes served (by Content-Length when the body is sent after the handler)",
            ["route"],
            registry=own,
        )
        self._in_flight: Gauge = Gauge(
            "dockyard_http_requests_in_flight",
            "requests being handled now (another worker's count may be up to a second old)",
            registry=own,
            multiprocess_mode="livesum",
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        self._in_flight.set(self._active)  # this worker's own count is exact at its scrape
        text = generate_latest(self.registry)
        if self._shared:  # what other workers' scrapes see until the next publish: without this one
            self._in_flight.set(self._active - 1)
        return text

    async def publish_in_flight(self, app: web.Application) -> AsyncIterator[None]:
        """Workers share the in-flight count through their files; each writes its own once a
        second instead of twice per request (each write costs about as much as a request's
        other metrics together). In one process the gauge reads the count when scraped."""
        if not self._shared:
            self._in_flight.set_function(lambda: self._active)
            yield
            return

        async def publish() -> None:
            while True:
                self._in_flight.set(self._active)
                await asyncio.sleep(IN_FLIGHT_PERIOD)

        task = asyncio.create_task(publish())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _series_for(self, method: str, route: str, status: int) -> _Series:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                self._requests.labels(method, route, str(status)),
                self._duration.labels(method, route),
                self._request_bytes.labels(route),
                self._response_bytes.labels(route),
            )
        return series

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The outermost middleware: it sees the status the client gets, errors and 401s included;
        an exception that escapes every other middleware is counted as the 500 aiohttp sends.
        Each value is written before the response goes out, so a scrape that follows it counts it."""
        start = time.perf_counter()
        self._active += 1
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects and the like, raised past the error middleware
            status = exc.status
            raise
        finally:
            self._active -= 1
            method = request.method if request.method in METHODS else OTHER
            route = self._route_names.get(request.match_info.route, OTHER)
            series = self._series_for(method, route, status)
            series.requests.inc()
            series.duration.observe(time.perf_counter() - start)
            received = request.content.total_bytes
            if received:
                series.request_bytes.inc(received)
            sent = _body_bytes(request, response)
            if sent:
                series.response_bytes.inc(sent)


def _body_bytes(request: web.Request, response: web.StreamResponse | None) -> int:
    if response is None or request.method == "HEAD":
        return 0
    length = response.content_length
    if length is not None:
        return length
    # A body streamed by the handler without a length: what went out once it ended.
    return response.body_length if response.prepared else 0


REQUEST_METRICS = web.AppKey("request_metrics", RequestMetrics)
