"""``/ui/replication``: the state of each replication rule and sync, for operators (docs/events.md)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from dockyard.http.common import EVENT_FIGURES
from dockyard.http.html import el, page, table


def _when(at: float | None) -> str:
    return "never" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def show_replication(request: web.Request) -> web.Response:
    figures_of = request.app.get(EVENT_FIGURES)
    figures = await figures_of() if figures_of is not None else {}
    rows = []
    for name in sorted(n for n in figures if n.startswith(("replication.", "sync."))):
        f = figures[name]
        rows.append(
            [
                name,
                str(int(f.get("pending", 0))),
                f"{f.get('oldest_pending_age', 0.0):.1f} s",
                str(int(f.get("delivered_total", 0))),
                str(int(f.get("failed_total", 0))),
                str(int(f.get("dead", 0))),
                _when(f.get("last_success")),
                _when(f.get("last_failure")),
            ]
        )
    body = (
        table(
            ["rule", "pending", "lag", "copied", "failures", "dead", "last success", "last failure"],
            rows,
        )
        if rows
        else el("p", "No replication rules or syncs are configured.")
    )
    return page("Replication", body, crumbs=[("replication", "/ui/replication")])
