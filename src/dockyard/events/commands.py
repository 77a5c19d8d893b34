"""``dockyard events list|redeliver|purge`` and ``dockyard replication status``."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from dockyard.metadata.outbox import DEAD, DELIVERED, PENDING, EventLog

T = TypeVar("T")

_options = [
    click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory"),
    click.option(
        "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
    ),
]


def _with_options(command: Any) -> Any:
    for option in reversed(_options):
        command = option(command)
    return command


def _with_log(config_file: Path | None, data_dir: Path | None, work: Callable[[EventLog], Awaitable[T]]) -> T:
    from dockyard.cli import _run, _settings, _store

    settings = _settings(config_file, data_dir)
    store = _store(settings, migrate=True)

    async def run() -> T:
        await store.open()
        try:
            return await work(store.event_log())
        finally:
            await store.close()

    return _run(settings, run())


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def events() -> None:
    """The events outbox: what was recorded, delivered, dead-lettered (docs/events.md)."""


@events.command("list")
@_with_options
@click.option("--sink", help="only this sink (replication rules: replication.<name>)")
@click.option("--state", type=click.Choice([PENDING, DELIVERED, DEAD]), help="only deliveries in this state")
@click.option("--repository", help="only this repository")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line, with the event")
def events_list(
    data_dir: Path | None,
    config_file: Path | None,
    sink: str | None,
    state: str | None,
    repository: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Deliveries, newest first: sequence, sink, state, attempts, type, repository, last error."""
    found = _with_log(config_file, data_dir, lambda log: log.list(sink, state, repository, limit))
    for d in found:
        if as_json:
            click.echo(json.dumps({**d.as_dict(), "event": json.loads(d.body)}))
        else:
            error = f"  {d.last_error}" if d.last_error else ""
            click.echo(
                f"{d.seq}\t{d.sink}\t{d.state}\t{d.attempts}\t{_when(d.created_at)}\t{d.type}\t{d.repository}{error}"
            )


@events.command("redeliver")
@_with_options
@click.argument("seqs", nargs=-1, type=int)
@click.option("--sink", help="only this sink")
@click.option(
    "--state",
    type=click.Choice([DEAD, DELIVERED]),
    default=DEAD,
    show_default=True,
    help="which deliveries to queue again",
)
def events_redeliver(
    data_dir: Path | None, config_file: Path | None, seqs: tuple[int, ...], sink: str | None, state: str
) -> None:
    """Queue deliveries again (dead letters by default; SEQS: only those events)."""
    count = _with_log(config_file, data_dir, lambda log: log.redeliver(time.time(), sink, state, seqs))
    click.echo(f"{count} deliveries queued again")


@events.command("purge")
@_with_options
@click.option("--older-than", type=float, default=0.0, show_default=True, help="seconds since delivery")
@click.option("--dead", is_flag=True, help="also drop dead letters")
@click.option("--sink", help="only this sink")
def events_purge(
    data_dir: Path | None, config_file: Path | None, older_than: float, dead: bool, sink: str | None
) -> None:
    """Drop delivered events now (and dead letters, with --dead); pending ones always stay."""
    count = _with_log(config_file, data_dir, lambda log: log.purge(time.time() - older_than, dead, sink))
    click.echo(f"{count} deliveries purged")


@click.group()
def replication() -> None:
    """Replication to other registries (docs/events.md)."""


@replication.command("status")
@_with_options
@click.option("--json", "as_json", is_flag=True)
def replication_status(data_dir: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Per rule: pending copies, lag (the oldest pending), last success, failures, last error."""
    from dockyard.cli import _settings
    from dockyard.events.replication import PREFIX
    from dockyard.events.sync import PREFIX as SYNC

    settings = _settings(config_file, data_dir)
    names = [PREFIX + r.name for r in settings.replication.rules]
    names += [SYNC + r.name for r in settings.replication.sync]

    async def work(log: EventLog) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        return await log.sink_figures(time.time()), await log.last_errors()

    figures, errors = _with_log(config_file, data_dir, work)
    rows: list[dict[str, Any]] = []
    for name in names + sorted(n for n in figures if n.startswith((PREFIX, SYNC)) and n not in names):
        f = figures.get(name, {})
        rows.append(
            {
                "rule": name,
                "configured": name in names,
                "pending": int(f.get(PENDING, 0)),
                "lag_seconds": round(f.get("oldest_pending_age", 0.0), 3),
                "copied": int(f.get("delivered_total", 0)),
                "failures": int(f.get("failed_total", 0)),
                "dead": int(f.get(DEAD, 0)),
                "last_success": f.get("last_success"),
                "last_error": errors.get(name),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['rule']}: pending {r['pending']}, lag {r['lag_seconds']}s, copied {r['copied']}, "
            f"failures {r['failures']}, dead {r['dead']}, last success {_when(r['last_success'])}"
            + ("" if r["configured"] else " (no longer configured)")
            + (f"\n  last error: {r['last_error']}" if r["last_error"] else "")
        )


def register(main: click.Group) -> None:
    main.add_command(events)
    main.add_command(replication)
