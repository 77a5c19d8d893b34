"""The ``dockyard`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dockyard import __version__
from dockyard.config import Settings, load_settings

if TYPE_CHECKING:
    from dockyard.fsck import FsckReport


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
def serve(
    listen: str | None,
    data_dir: Path | None,
    workers: int | None,
    config_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve the registry (filesystem + SQLite by default: nothing to configure)."""
    from dockyard.http.server import serve as run

    try:
        settings = load_settings(
            config_file, listen=listen, data_dir=data_dir, workers=workers, tls_cert=tls_cert, tls_key=tls_key
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        run(settings)
    except ssl.SSLError as exc:
        raise click.ClickException(f"TLS certificate or key unusable: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.listen}: {exc.strerror}") from exc


def _settings(config_file: Path | None, data_dir: Path | None) -> Settings:
    try:
        return load_settings(config_file, data_dir=data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


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
    if not settings.data_dir.is_dir():
        raise click.ClickException(f"{settings.data_dir} is not a directory")

    async def run() -> FsckReport:
        core = build_registry(settings)
        await core.meta.open()
        try:
            return await run_fsck(core, repair=repair, grace_seconds=grace_seconds)
        finally:
            await core.meta.close()

    report = asyncio.run(run())
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
