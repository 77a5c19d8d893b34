"""The client commands: ``dockyard push``, ``pull``, ``copy`` and ``probe``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import click

from dockyard.client.content import PlatformNotFound, check_platform_spec
from dockyard.client.layout import LayoutError, OciLayout, split_layout_argument
from dockyard.client.progress import Progress, human
from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry, RegistryError
from dockyard.client.state import STATE_FILE
from dockyard.client.upload import DEFAULT_CHUNK_SIZE, DEFAULT_SINGLE_POST_MAX
from dockyard.loop import LoopUnavailable
from dockyard.loop import run as run_loop

T = TypeVar("T")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``16MiB``, ``16M``, ``512k``, ``1048576`` → bytes (binary units)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 16MiB)")
    factor = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * factor)


class SizeType(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        return value if isinstance(value, int) else parse_size(str(value))


SIZE = SizeType()


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Credentials, TLS and retry options every client command takes."""
    decorators = [
        click.option("-u", "--username", envvar="DOCKYARD_USERNAME", help="user [env DOCKYARD_USERNAME]"),
        click.option("-p", "--password", envvar="DOCKYARD_PASSWORD", help="password [env DOCKYARD_PASSWORD]"),
        click.option("--password-stdin", is_flag=True, help="read the password from standard input"),
        click.option(
            "--plain-http",
            is_flag=True,
            help="plain HTTP (also: write http:// before the host; loopback hosts use it by default)",
        ),
        click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False), help="CA bundle to trust"),
        click.option("--insecure", is_flag=True, help="TLS without verifying the registry's certificate"),
        click.option(
            "--client-cert", type=click.Path(path_type=Path, dir_okay=False), help="client certificate (mTLS)"
        ),
        click.option("--client-key", type=click.Path(path_type=Path, dir_okay=False), help="its key"),
        click.option(
            "--retries",
            type=int,
            default=8,
            show_default=True,
            help="failed attempts in a row before giving up",
        ),
        click.option(
            "--timeout",
            type=float,
            default=60.0,
            show_default=True,
            help="seconds without progress before a request fails",
        ),
        click.option("--json", "as_json", is_flag=True, help="print the result as JSON"),
        click.option("-q", "--quiet", is_flag=True, help="no progress output"),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _upload_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How blobs are sent, for the commands that push (push, copy)."""
    decorators = [
        click.option(
            "--chunk-size", type=SIZE, default=DEFAULT_CHUNK_SIZE, help="bytes per PATCH [default: 16MiB]"
        ),
        click.option(
            "--single-post-max",
            type=SIZE,
            default=DEFAULT_SINGLE_POST_MAX,
            help="blobs up to this go in one POST [1MiB]",
        ),
        click.option(
            "--jobs",
            type=int,
            default=3,
            show_default=True,
            help="blobs (and direct parts) in flight at once",
        ),
        click.option(
            "--no-direct",
            is_flag=True,
            help="send every byte through the registry, even where it offers direct uploads to its store",
        ),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _client_options(kwargs: dict[str, Any]) -> ClientOptions:
    password = kwargs.pop("password")
    if kwargs.pop("password_stdin"):
        password = sys.stdin.readline().rstrip("\r\n")
    return ClientOptions(
        username=kwargs.pop("username"),
        password=password,
        plain_http=kwargs.pop("plain_http"),
        ca_cert=kwargs.pop("ca_cert"),
        insecure=kwargs.pop("insecure"),
        client_cert=kwargs.pop("client_cert"),
        client_key=kwargs.pop("client_key"),
        retries=kwargs.pop("retries"),
        idle_timeout=kwargs.pop("timeout"),
    )


def _reference(text: str, **kwargs: Any) -> ImageReference:
    try:
        return ImageReference.parse(text, **kwargs)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: after Ctrl-C, how long the work may take to wind down before the process leaves anyway
INTERRUPT_GRACE = 10.0


def _leave(interrupted: str) -> None:
    """Exit at once (130): what resumes the work is on disk already (a kill -9 loses nothing)."""
    click.echo(f"\ninterrupted; {interrupted}", err=True)
    sys.stderr.flush()
    os._exit(130)


async def _interruptible(work: Coroutine[Any, Any, T], interrupted: str) -> T:
    """``work``, which Ctrl-C cancels; if it has not ended ``INTERRUPT_GRACE`` seconds later (a
    request stalled in a write on a dead link can swallow the cancellation), or at a second
    Ctrl-C, the process leaves anyway."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            _leave(interrupted)
        if task is not None:
            task.cancel()
        loop.call_later(INTERRUPT_GRACE, _leave, interrupted)

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here: the default stays
        return await work
    try:
        return await work
    except asyncio.CancelledError:
        if presses:
            raise KeyboardInterrupt from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def _run(work: Coroutine[Any, Any, T], interrupted: str) -> T:
    try:
        # The client reads no settings file: DOCKYARD_EVENT_LOOP picks the loop (default auto).
        return run_loop(_interruptible(work, interrupted))
    except LoopUnavailable as exc:
        work.close()  # never started: no "coroutine was never awaited" warning
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {interrupted}", err=True)
        sys.exit(130)
    except (RegistryError, LayoutError, PlatformNotFound) as exc:
        raise click.ClickException(str(exc)) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


@click.command()
@click.argument("layout")
@click.argument("destination")
@_upload_options
@click.option("--no-resume", is_flag=True, help=f"do not read or keep {STATE_FILE}")
@_options
def push(
    layout: str,
    destination: str,
    chunk_size: int,
    single_post_max: int,
    jobs: int,
    no_direct: bool,
    no_resume: bool,
    as_json: bool,
    quiet: bool,
    **kwargs: Any,
) -> None:
    """Push LAYOUT[:TAG|@DIGEST] (an OCI layout directory) to HOST[:PORT]/REPOSITORY[:TAG].

    Large blobs go in chunks; a dropped connection, timeout, 5xx or 416 is answered by asking the
    upload session where it stands and going on from there. Interrupted (Ctrl-C, a crash)? Run the
    same command again: it continues the same upload sessions.
    """
    from dockyard.client.push import push_image

    options = _client_options(kwargs)
    path, ref = split_layout_argument(layout)
    dest = _reference(destination)
    if dest.tag is None and dest.digest is None and ref and ":" not in ref:
        dest = dest.with_reference(tag=ref)
    progress = Progress.for_stream(quiet=quiet or as_json)

    async def run() -> dict[str, Any]:
        async with Registry.for_reference(dest, options) as registry:
            report = await push_image(
                OciLayout(path),
                ref,
                dest,
                registry,
                progress=progress,
                chunk_size=chunk_size,
                single_post_max=single_post_max,
                jobs=jobs,
                direct=not no_direct,
                resume=not no_resume,
            )
        progress.close()
        return report.as_dict()

    data = _run(run(), f"run the same command again to resume (upload sessions kept in {path / STATE_FILE})")
    _emit(
        as_json,
        data,
        f"pushed {dest.with_reference(tag=dest.tag)}@{data['digest']} "
        f"({human(data['bytes_sent'])} sent, {data['faults_recovered']} faults recovered)",
    )


@click.command()
@click.argument("source")
@click.argument("layout")
@click.option("--jobs", type=int, default=3, show_default=True, help="blobs in flight at once")
@click.option(
    "--platform",
    callback=lambda _ctx, _param, value: _platform_option(value),
    help="OS/ARCH[/VARIANT]: of an index, pull only this platform's image",
)
@click.option("--referrers", is_flag=True, help="also pull what refers to the image (signatures, SBOMs)")
@_options
def pull(
    source: str,
    layout: str,
    jobs: int,
    platform: str | None,
    referrers: bool,
    as_json: bool,
    quiet: bool,
    **kwargs: Any,
) -> None:
    """Pull HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] (all platforms, or --platform's) into the OCI
    layout LAYOUT[:TAG].

    Blobs download with Range requests into .partial files: an interrupted pull goes on where it
    stopped when run again. Every digest is verified.
    """
    from dockyard.client.pull import pull_image, summary

    options = _client_options(kwargs)
    src = _reference(source)
    path, tag = split_layout_argument(layout)
    progress = Progress.for_stream(quiet=quiet or as_json)

    async def run() -> dict[str, Any]:
        async with Registry.for_reference(src, options) as registry:
            report = await pull_image(
                src,
                registry,
                OciLayout(path),
                progress=progress,
                jobs=jobs,
                tag=tag,
                platform=platform,
                referrers=referrers,
            )
        progress.close()
        return summary(report)

    data = _run(run(), "run the same command again to resume")
    _emit(
        as_json,
        data,
        f"pulled {src}@{data['digest']} into {path} ({human(data['bytes_downloaded'])} downloaded)",
    )


def _platform_option(value: str | None) -> str | None:
    try:
        return None if value is None else check_platform_spec(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _default_copy_state() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dockyard" / "copy-state.json"


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--src-username", envvar="DOCKYARD_SRC_USERNAME", help="source user, if not --username")
@click.option("--src-password", envvar="DOCKYARD_SRC_PASSWORD", help="source password")
@click.option("--referrers/--no-referrers", default=True, show_default=True, help="copy the referrers too")
@_upload_options
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="resume state file [default: $XDG_CACHE_HOME/dockyard/copy-state.json]",
)
@_options
def copy(
    source: str,
    destination: str,
    src_username: str | None,
    src_password: str | None,
    referrers: bool,
    chunk_size: int,
    single_post_max: int,
    jobs: int,
    no_direct: bool,
    state_file: Path | None,
    as_json: bool,
    quiet: bool,
    **kwargs: Any,
) -> None:
    """Copy SOURCE to DESTINATION (both HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]): every platform of an
    index and the referrers; within one registry blobs are mounted, not copied."""
    from dockyard.client.copy import copy_image

    options = _client_options(kwargs)
    src_ref, dst_ref = _reference(source), _reference(destination)
    src_options = ClientOptions(**{**options.__dict__})
    if src_username is not None:
        src_options.username, src_options.password = src_username, src_password
    state = state_file or _default_copy_state()
    state.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress.for_stream(quiet=quiet or as_json)

    async def run() -> dict[str, Any]:
        async with (
            Registry.for_reference(src_ref, src_options) as src,
            Registry.for_reference(dst_ref, options) as dst,
        ):
            report = await copy_image(
                src_ref,
                dst_ref,
                src,
                dst,
                progress=progress,
                referrers=referrers,
                chunk_size=chunk_size,
                single_post_max=single_post_max,
                jobs=jobs,
                direct=not no_direct,
                state_file=state,
            )
        progress.close()
        return report.as_dict()

    data = _run(run(), "run the same command again to resume")
    _emit(
        as_json,
        data,
        f"copied {src_ref} to {dst_ref}@{data['digest']}: {data['manifests']} manifests, "
        f"{len(data['referrers'])} referrers, blobs {data['blobs']}",
    )


@click.command()
@click.argument("registry")
@click.option(
    "--repository", default="dockyard-probe", show_default=True, help="scratch repositories go under this"
)
@click.option("--chunk-size", type=SIZE, default=256 * 1024, help="chunk size to probe with [256KiB]")
@_options
def probe(registry: str, repository: str, chunk_size: int, as_json: bool, quiet: bool, **kwargs: Any) -> None:
    """Run the chunked-upload scenarios against REGISTRY (HOST[:PORT]) and print what it does.

    Location stable or changing, old Locations, 416 headers, GET on a session, streamed PATCH,
    PATCH without Content-Length, single POST, mounts, OCI-Chunk-Min-Length, a lost response, a
    cut body, the referrers API. Everything it makes goes in scratch repositories it removes.
    """
    from dockyard.client.probe import probe as run_probe

    options = _client_options(kwargs)
    ref = _reference(registry, need_repository=False)

    async def run() -> Any:
        async with Registry.for_reference(ref, options) as client:
            return await run_probe(client, repository.strip("/"), chunk_size)

    report = _run(run(), "the scratch repositories may be left behind")
    click.echo(report.to_json() if as_json else report.table())


def register(group: click.Group) -> None:
    """Add the client commands to the ``dockyard`` command."""
    for command in (push, pull, copy, probe):
        group.add_command(command)
