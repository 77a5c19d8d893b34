"""Per-request metrics (docs/reference/metrics.md): counts, durations and bytes by route, summed
over workers. The values live in ``metricfiles.py``'s tables; this module counts into them and
writes the Prometheus text format of their sum."""

from __future__ import annotations

import bisect
import os
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from dockyard.http import metricfiles

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Any other method (a client may send anything) is labelled "other": labels stay a small set.
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"

# A record's values (metricfiles.SLOTS of them), one record per (method, route, status):
REQUESTS = 0
DURATION_SUM = 1
FIRST_BUCKET = 2  # one per bound, then +Inf: how many took at most that long, more than the one before
REQUEST_BYTES = FIRST_BUCKET + len(BUCKETS) + 1
RESPONSE_BYTES = REQUEST_BYTES + 1
assert RESPONSE_BYTES < metricfiles.SLOTS

REQUESTS_TOTAL = "dockyard_http_requests_total"
DURATION = "dockyard_http_request_duration_seconds"
REQUEST_BYTES_TOTAL = "dockyard_http_request_bytes_total"
RESPONSE_BYTES_TOTAL = "dockyard_http_response_bytes_total"
IN_FLIGHT = "dockyard_http_requests_in_flight"
#: name, type, labels, help: what /metrics says (and docs/reference/metrics.md)
FAMILIES: list[tuple[str, str, tuple[str, ...], str]] = [
    (
        REQUESTS_TOTAL,
        "counter",
        ("method", "route", "status"),
        "HTTP requests answered, by method, route (the handler) and status",
    ),
    (
        DURATION,
        "histogram",
        ("method", "route"),
        "time from a request's arrival until its response is ready to send (a blob's body, "
        "sent with sendfile, goes out after)",
    ),
    (REQUEST_BYTES_TOTAL, "counter", ("route",), "request body bytes received"),
    (
        RESPONSE_BYTES_TOTAL,
        "counter",
        ("route",),
        "response body bytes served (by Content-Length when the body is sent after the handler)",
    ),
    (IN_FLIGHT, "gauge", (), "requests being handled now, by every worker"),
]
_HELP = {name: (kind, text) for name, kind, _, text in FAMILIES}


def use_this_process_only() -> None:
    """One process serves: values live in its memory (an inherited directory setting is dropped)."""
    os.environ.pop(metricfiles.DIRECTORY_ENV, None)


class RequestMetrics:
    """The per-request figures of one app: counted by ``started``/``finished`` around each
    request, rendered for a scrape by ``render``."""

    def __init__(self, route_names: dict[web.AbstractRoute, str], directory: Path | None = None) -> None:
        self._route_names = route_names
        self._directory = directory if directory is not None else metricfiles.shared_directory()
        self._table: metricfiles.ValueTable | None = None  # made in the process that serves
        self._slots: dict[tuple[str, str, int], int] = {}
        self._active = 0  # requests this process is handling now

    def _values(self) -> memoryview[float]:
        if self._table is None:
            self._table = metricfiles.ValueTable(self._directory)
        return self._table.values

    def started(self) -> float:
        self._active += 1
        self._values()[metricfiles.IN_FLIGHT] = self._active
        return time.perf_counter()

    def finished(
        self, request: web.Request, response: web.StreamResponse | None, status: int, started: float
    ) -> None:
        """Count one request; written before its response goes out, so a scrape after it counts it."""
        elapsed = time.perf_counter() - started
        self._active -= 1
        values = self._values()
        values[metricfiles.IN_FLIGHT] = self._active
        method = request.method if request.method in METHODS else OTHER
        route = self._route_names.get(request.match_info.route, OTHER)
        key = (method, route, status)
        slot = self._slots.get(key)
        if slot is None:
            assert self._table is not None
            slot = self._slots[key] = self._table.slot(f"{method}\t{route}\t{status}")
        values[slot + REQUESTS] += 1.0
        values[slot + DURATION_SUM] += elapsed
        values[slot + FIRST_BUCKET + bisect.bisect_left(BUCKETS, elapsed)] += 1.0
        received = request.content.total_bytes
        if received:
            values[slot + REQUEST_BYTES] += received
        sent = _body_bytes(request, response)
        if sent:
            values[slot + RESPONSE_BYTES] += sent

    def render(self) -> bytes:
        """The Prometheus text of the sum over every worker (this process alone when it serves alone)."""
        self._values()
        assert self._table is not None
        if self._directory is None:
            tables = [self._table.snapshot()]
        else:
            tables = list(metricfiles.read_all(self._directory))
        return _text(tables)


def _text(tables: list[metricfiles.Table]) -> bytes:
    requests: dict[tuple[str, str, str], float] = defaultdict(float)
    durations: dict[tuple[str, str], list[float]] = {}
    request_bytes: dict[str, float] = defaultdict(float)
    response_bytes: dict[str, float] = defaultdict(float)
    in_flight = 0.0
    for flying, records in tables:
        in_flight += flying
        for key, values in records:
            method, route, status = [*key.split("\t"), OTHER, OTHER, OTHER][:3]
            requests[method, route, status] += values[REQUESTS]
            histogram = durations.setdefault((method, route), [0.0] * (len(BUCKETS) + 2))
            for i in range(len(BUCKETS) + 1):
                histogram[i] += values[FIRST_BUCKET + i]
            histogram[-1] += values[DURATION_SUM]
            request_bytes[route] += values[REQUEST_BYTES]
            response_bytes[route] += values[RESPONSE_BYTES]
    lines: list[str] = []

    def family(name: str) -> None:
        kind, text = _HELP[name]
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

    family(REQUESTS_TOTAL)
    for (method, route, status), count in sorted(requests.items()):
        lines.append(f'{REQUESTS_TOTAL}{{method="{method}",route="{route}",status="{status}"}} {count!r}')
    family(DURATION)
    for (method, route), histogram in sorted(durations.items()):
        labels = f'method="{method}",route="{route}"'
        cumulative = 0.0
        for bound, count in zip((*BUCKETS, float("inf")), histogram, strict=False):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{DURATION}_bucket{{{labels},le="{le}"}} {cumulative!r}')
        lines.append(f"{DURATION}_count{{{labels}}} {cumulative!r}")
        lines.append(f"{DURATION}_sum{{{labels}}} {histogram[-1]!r}")
    for name, by_route in ((REQUEST_BYTES_TOTAL, request_bytes), (RESPONSE_BYTES_TOTAL, response_bytes)):
        family(name)
        lines.extend(f'{name}{{route="{route}"}} {total!r}' for route, total in sorted(by_route.items()))
    family(IN_FLIGHT)
    lines.append(f"{IN_FLIGHT} {in_flight!r}")
    return "".join(line + "\n" for line in lines).encode()


def _body_bytes(request: web.Request, response: web.StreamResponse | None) -> int:
    if response is None or request.method == "HEAD":
        return 0
    length = response.content_length
    if length is not None:
        return length
    # A body streamed by the handler without a length: what went out once it ended.
    return response.body_length if response.prepared else 0


REQUEST_METRICS = web.AppKey("request_metrics", RequestMetrics)
