"""The ``dockyard`` command."""

from __future__ import annotations

import json
import logging
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dockyard import __version__
from dockyard.config import Settings, load_settings
from dockyard.loop import LoopUnavailable
from dockyard.loop import run as run_loop

if TYPE_CHECKING:
    from dockyard.fsck import FsckReport

T = TypeVar("T")


@click.group()
@click.version_option(__version__, prog_name="dockyard")
def main() -> None:
    """dockyard: an OCI Distribution registry."""


@main.command()
@click.option("--listen", help="HOST:PORT to listen on [default: 127.0.0.1:5000]")
@click.option("--data-dir", type=click.Path(path_type=Path), help="where blobs and metadata live")
@click.option("--workers", type=int, help="worker processes [default: one per core]")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
)
@click.option(
    "--tls-cert", type=click.Path(path_type=Path, dir_okay=False), help="serve HTTPS with this cert"
)
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), help="the certificate's key")
@click.option("--proxy-remote-url", help="be a pull-through cache of this registry (read-only)")
def serve(
    listen: str | None,
    data_dir: Path | None,
    workers: int | None,
    config_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    proxy_remote_url: str | None,
) -> None:
    """Serve the registry (filesystem + SQLite by default: nothing to configure)."""
    from dockyard.http.server import serve as run
    from dockyard.startup import StartupError

    # Merged with the rest of the proxy section from the file and the environment.
    proxy = {"remote_url": proxy_remote_url} if proxy_remote_url else None
    try:
        settings = load_settings(
            config_file,
            listen=listen,
            data_dir=data_dir,
            workers=workers,
            tls_cert=tls_cert,
            tls_key=tls_key,
            proxy=proxy,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    _check_packages(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        run(settings)
    except ssl.SSLError as exc:
        raise click.ClickException(f"TLS certificate or key unusable: {exc}") from exc
    except StartupError as exc:  # one line naming the setting (docs/operations.md)
        raise click.ClickException(str(exc)) from exc


def _settings(config_file: Path | None, data_dir: Path | None) -> Settings:
    try:
        settings = load_settings(config_file, data_dir=data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    _check_packages(settings)
    return settings


def _check_packages(settings: Settings) -> None:
    from dockyard.wiring import missing_packages

    missing = missing_packages(settings)
    if missing:
        raise click.ClickException(f"the configured storage or database needs more packages: {missing}")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
)
@click.option("--repair", is_flag=True, help="remove damage and orphans older than the grace period")
@click.option(
    "--grace-seconds", type=float, default=3600.0, show_default=True, help="orphans younger are kept"
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def fsck(
    data_dir: Path | None, config_file: Path | None, repair: bool, grace_seconds: float, as_json: bool
) -> None:
    """Check a data directory: blobs hash to their digests, records have their bytes."""
    from dockyard.fsck import fsck as run_fsck
    from dockyard.wiring import build_registry

    settings = _settings(config_file, data_dir)
    if settings.storage == "filesystem" and not settings.data_dir.is_dir():
        raise click.ClickException(f"{settings.data_dir} is not a directory")

    async def run() -> FsckReport:
        core = build_registry(settings)
        await core.meta.open()
        try:
            return await run_fsck(core, repair=repair, grace_seconds=grace_seconds)
        finally:
            await core.meta.close()
            await core.blobs.close()

    report = _run(settings, run())
    data = report.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(f"checked {report.blobs_checked} blobs, {report.bytes_checked} bytes")
        for key, value in data.items():
            if isinstance(value, list) and value:
                click.echo(f"{key.replace('_', ' ')}: {len(value)}")
                for item in value[:50]:
                    click.echo(f"  {item}")
        click.echo("clean" if report.clean else "DAMAGE FOUND")
    sys.exit(0 if report.clean or repair else 1)


@main.group()
def user() -> None:
    """Manage the users of basic and token auth (the htpasswd file, bcrypt)."""


def _htpasswd_path(config_file: Path | None, data_dir: Path | None, htpasswd: Path | None) -> Path:
    if htpasswd is not None:
        return htpasswd
    settings = _settings(config_file, data_dir)
    return settings.auth.htpasswd or settings.data_dir / "auth" / "htpasswd"


_user_options = [
    click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory"),
    click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False)),
    click.option("--htpasswd", type=click.Path(path_type=Path, dir_okay=False), help="the file to change"),
]


def _with_user_options(f: Any) -> Any:
    for option in reversed(_user_options):
        f = option(f)
    return f


@user.command("add")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="or prompted")
@_with_user_options
def user_add(
    name: str, password: str, data_dir: Path | None, config_file: Path | None, htpasswd: Path | None
) -> None:
    """Add a user, or set a user's password."""
    from dockyard.auth.htpasswd import hash_password, read_entries, valid_user_name, write_entries

    if not valid_user_name(name):
        raise click.ClickException("a user name is 1-128 printable characters without ':'")
    path = _htpasswd_path(config_file, data_dir, htpasswd)
    entries = read_entries(path)
    entries[name] = hash_password(password)
    write_entries(path, entries)
    click.echo(f"user {name} saved in {path}")


@user.command("remove")
@click.argument("name")
@_with_user_options
def user_remove(name: str, data_dir: Path | None, config_file: Path | None, htpasswd: Path | None) -> None:
    """Remove a user."""
    from dockyard.auth.htpasswd import read_entries, write_entries

    path = _htpasswd_path(config_file, data_dir, htpasswd)
    entries = read_entries(path)
    if entries.pop(name, None) is None:
        raise click.ClickException(f"no user {name} in {path}")
    write_entries(path, entries)
    click.echo(f"user {name} removed from {path}")


@user.command("list")
@_with_user_options
def user_list(data_dir: Path | None, config_file: Path | None, htpasswd: Path | None) -> None:
    """List the users."""
    from dockyard.auth.htpasswd import read_entries

    for name in sorted(read_entries(_htpasswd_path(config_file, data_dir, htpasswd))):
        click.echo(name)


def _run_with_core(settings: Settings, work: Any) -> Any:
    """Open the configured stores, run ``await work(core)``, close them."""
    from dockyard.wiring import build_registry

    async def run() -> Any:
        core = build_registry(settings)
        await core.meta.open()
        try:
            return await work(core)
        finally:
            await core.meta.close()
            await core.blobs.close()

    return _run(settings, run())


def _run(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the event loop the settings name (``event_loop``)."""
    try:
        return run_loop(work, settings.event_loop)
    except LoopUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
)
@click.option("--dry-run", is_flag=True, help="only print what would be freed")
@click.option("--grace-seconds", type=float, help="override gc.grace_seconds")
@click.option("--delete-untagged/--keep-untagged", default=None, help="override gc.delete_untagged")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
def gc(
    data_dir: Path | None,
    config_file: Path | None,
    dry_run: bool,
    grace_seconds: float | None,
    delete_untagged: bool | None,
    as_json: bool,
) -> None:
    """Collect garbage now (safe while the registry serves): print counts and bytes freed."""
    from dockyard.gc import collect

    settings = _settings(config_file, data_dir)
    policy = settings.gc.model_copy(
        update={
            k: v
            for k, v in (("grace_seconds", grace_seconds), ("delete_untagged", delete_untagged))
            if v is not None
        }
    )
    report = _run_with_core(settings, lambda core: collect(core, policy, dry_run=dry_run))
    data = report.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if report.skipped:
        click.echo(f"nothing done: {report.skipped}")
        sys.exit(1)
    verb = "would free" if dry_run else "freed"
    counts = report.counts
    click.echo(
        f"{verb} {report.bytes_freed} bytes: {counts['blobs']} blobs, {counts['manifests']} manifests, "
        f"{counts['tags']} tags, {counts['links']} links; {report.sessions_purged} stale sessions; "
        f"{report.duration:.2f}s"
    )
    for key in ("tags", "manifests", "links", "blobs"):
        for item in data[key][:200]:
            click.echo(f"  {key[:-1]} {item}")


@main.group()
def repo() -> None:
    """Administer repositories."""


@repo.command("delete")
@click.argument("name")
@click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
)
def repo_delete(name: str, data_dir: Path | None, config_file: Path | None) -> None:
    """Delete a repository: its tags, manifests and links (the bytes go at the next gc)."""
    from dockyard.registry.errors import RegistryError
    from dockyard.registry.names import parse_name

    settings = _settings(config_file, data_dir)
    try:
        _run_with_core(settings, lambda core: core.delete_repository(parse_name(name)))
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"repository {name} deleted; run `dockyard gc` to free its bytes")


@main.group()
def db() -> None:
    """The metadata database's schema (migrations with Alembic)."""


def _store(settings: Settings, migrate: bool) -> Any:
    from dockyard.metadata.store import SqlMetadataStore

    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqlMetadataStore(settings.metadata_url, migrate=migrate)


_db_options = [
    click.option("--data-dir", type=click.Path(path_type=Path), help="the registry's data directory"),
    click.option(
        "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="YAML settings file"
    ),
]


def _with_db_options(command: Any) -> Any:
    for option in reversed(_db_options):
        command = option(command)
    return command


@db.command("upgrade")
@_with_db_options
def db_upgrade(data_dir: Path | None, config_file: Path | None) -> None:
    """Migrate the schema to this version's newest revision (safe to run from many nodes at once)."""
    settings = _settings(config_file, data_dir)
    store = _store(settings, migrate=True)

    async def run() -> tuple[str | None, str | None]:
        await store.open()  # migrates, under a lock on PostgreSQL
        try:
            revisions: tuple[str | None, str | None] = await store.revisions()
            return revisions
        finally:
            await store.close()

    current, _head = _run(settings, run())
    click.echo(f"schema at revision {current}")


@db.command("current")
@_with_db_options
def db_current(data_dir: Path | None, config_file: Path | None) -> None:
    """Print the schema's revision and the newest one this version knows; exit 1 if behind."""
    settings = _settings(config_file, data_dir)
    store = _store(settings, migrate=False)

    async def run() -> tuple[str | None, str | None]:
        await store.connect()
        try:
            revisions: tuple[str | None, str | None] = await store.revisions()
            return revisions
        finally:
            await store.close()

    current, head = _run(settings, run())
    click.echo(f"current: {current or 'none'}\nhead: {head}")
    sys.exit(0 if current == head else 1)


from dockyard.client.commands import register as _register_client_commands  # noqa: E402

_register_client_commands(main)

from dockyard.events.commands import register as _register_event_commands  # noqa: E402

_register_event_commands(main)
