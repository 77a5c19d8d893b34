"""Content discovery: tags list, referrers, and the ``_catalog`` extension."""

from __future__ import annotations

from aiohttp import web

from dockyard.http import auth
from dockyard.http.common import EVENT_FIGURES, json_response, next_link, registry, repository
from dockyard.http.metrics import REQUEST_METRICS
from dockyard.registry.digests import Digest
from dockyard.registry.manifests import OCI_INDEX, referrers_index


async def api_version(request: web.Request) -> web.Response:
    """``GET /v2/``: this registry speaks the Distribution API."""
    return json_response({})


async def list_tags(request: web.Request) -> web.Response:
    name = repository(request)
    core = registry(request)
    limit = core.page_size(request.query.get("n"))
    tags, more = await core.list_tags(name, limit, request.query.get("last"))
    response = json_response({"name": name, "tags": tags})
    if more and tags:
        response.headers["Link"] = next_link(request.path, limit, tags[-1])
    return response


async def list_referrers(request: web.Request) -> web.Response:
    name = repository(request)
    subject = Digest.parse(request.match_info["digest"])
    artifact_type = request.query.get("artifactType") or None
    records = await registry(request).list_referrers(name, subject, artifact_type)
    response = json_response(referrers_index(records), content_type=OCI_INDEX)
    if artifact_type is not None:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    return response


async def list_repositories(request: web.Request) -> web.Response:
    core = registry(request)
    limit = core.page_size(request.query.get("n"))
    names, more = await core.list_repositories(limit, request.query.get("last"), auth.readable(request))
    response = json_response({"repositories": names})
    if more and names:
        response.headers["Link"] = next_link(request.path, limit, names[-1])
    return response


_METRICS = [
    ("dockyard_blob_bytes", "gauge", "bytes of blobs recorded", "blob_bytes"),
    ("dockyard_blobs", "gauge", "blobs recorded", "blobs"),
    ("dockyard_manifest_bytes", "gauge", "bytes of manifests recorded", "manifest_bytes"),
    ("dockyard_manifests", "gauge", "manifests recorded (per repository)", "manifests"),
    ("dockyard_repositories", "gauge", "repositories", "repositories"),
    ("dockyard_upload_sessions", "gauge", "open upload sessions", "uploads"),
    ("dockyard_gc_runs_total", "counter", "garbage collections run", "gc_runs"),
    ("dockyard_gc_freed_bytes_total", "counter", "bytes freed by garbage collection", "gc_bytes_freed"),
    (
        "dockyard_gc_last_run_timestamp_seconds",
        "gauge",
        "when the last collection started",
        "gc_last_started",
    ),
    ("dockyard_gc_last_duration_seconds", "gauge", "how long the last collection took", "gc_last_duration"),
]


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. The registry-wide figures come from the metadata store, so every
    worker and every node reports the same values; the per-request families are this node's,
    summed over its workers."""
    stats = await registry(request).meta.statistics()
    lines = []
    for name, kind, help_text, key in _METRICS:
        if key in stats:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {stats[key]:.17g}"]
    figures = request.app.get(EVENT_FIGURES)
    if figures is not None:
        lines += _event_lines(await figures())
    body = "".join(line + "\n" for line in lines).encode() + request.app[REQUEST_METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


_EVENT_METRICS = [
    ("dockyard_events_pending", "gauge", "events waiting for delivery", "pending"),
    ("dockyard_events_dead", "gauge", "dead-lettered events (until redelivered or purged)", "dead"),
    (
        "dockyard_events_oldest_pending_age_seconds",
        "gauge",
        "age of the oldest event waiting for delivery (0: none)",
        "oldest_pending_age",
    ),
    ("dockyard_events_delivered_total", "counter", "events delivered", "delivered_total"),
    ("dockyard_events_failed_total", "counter", "failed delivery attempts", "failed_total"),
    ("dockyard_events_dead_lettered_total", "counter", "events dead-lettered", "dead_total"),
    (
        "dockyard_events_last_success_timestamp_seconds",
        "gauge",
        "when an event was last delivered",
        "last_success",
    ),
    (
        "dockyard_events_last_failure_timestamp_seconds",
        "gauge",
        "when a delivery last failed",
        "last_failure",
    ),
]
_ALWAYS = {"pending", "dead", "oldest_pending_age", "delivered_total", "failed_total", "dead_total"}


def _event_lines(figures: dict[str, dict[str, float]]) -> list[str]:
    """Per sink (replication rules as ``replication.<name>``), the same for every node."""
    lines = []
    for name, kind, help_text, key in _EVENT_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for sink in sorted(figures):
            value = figures[sink].get(key, 0.0 if key in _ALWAYS else None)
            if value is not None:
                label = sink.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{name}{{sink="{label}"}} {value:.17g}')
    return lines
