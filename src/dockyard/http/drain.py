"""A worker's shutdown state, shared by the server (which drives it), the health endpoints and
the request bodies (docs/operations.md "Graceful shutdown")."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass
class Drain:
    """``draining`` from SIGTERM on (readiness answers 503, answers close their connection);
    ``cut`` once the grace period is over: request bodies still arriving end there with 503,
    their upload sessions keeping the bytes that arrived."""

    draining: bool = False
    cut: bool = False


DRAIN = web.AppKey("drain", Drain)
