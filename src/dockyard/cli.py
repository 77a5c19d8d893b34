"""The ``dockyard`` command."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dockyard import __version__
from dockyard.config import load_settings


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
def serve(listen: str | None, data_dir: Path | None, workers: int | None, config_file: Path | None) -> None:
    """Serve the registry (filesystem + SQLite by default: nothing to configure)."""
    from dockyard.http.server import serve as run

    try:
        settings = load_settings(config_file, listen=listen, data_dir=data_dir, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run(settings)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {settings.listen}: {exc.strerror}") from exc
