"""Before a node listens: its data directory writable, its database reachable with the schema
current, its bucket usable with its credentials (docs/operations.md "Start-up checks").

Containers start in any order, so what is not up yet is waited for, up to
``startup_wait_seconds``, with a log line every few seconds naming it. What waiting cannot fix
(credentials rejected, no such bucket or database, an unwritable data directory) ends the start
at once. Either way the node exits with one line naming the setting to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from dockyard.registry.ports import DependencyDown
from dockyard.registry.service import Registry
from dockyard.wiring import build_registry

if TYPE_CHECKING:
    from dockyard.config import Settings

log = logging.getLogger("dockyard")

LOG_EVERY = 5.0  # seconds between "still waiting" lines
ATTEMPT_TIMEOUT = 10.0  # one probe of a store that neither answers nor refuses (a black hole)
_BACKOFF = (0.25, 0.5, 1.0, 2.0)


class StartupError(Exception):
    """Why the node does not start: one line for the operator, naming the setting."""


def check_data_dir(settings: Settings) -> None:
    """The data directory exists (made if need be) and takes a new file. A full disk passes
    with a warning: pulls keep working, pushes get 507 until there is room."""
    path = settings.data_dir
    probe = path / f".probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"dockyard")
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.warning("data_dir %s is full: pushes will be refused (507) until there is room", path)
            return
        raise StartupError(f"data_dir: {path} is not writable: {exc.strerror or exc}") from exc


def _storage_setting(settings: Settings) -> str:
    return "s3.endpoint_url" if settings.storage == "s3" else "data_dir"


async def _probe(setting: str, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
    try:
        async with asyncio.timeout(ATTEMPT_TIMEOUT):
            await attempt()
    except TimeoutError:
        raise DependencyDown(setting, f"{what} did not answer within {ATTEMPT_TIMEOUT:g} s") from None


async def _database(core: Registry, settings: Settings) -> None:
    """Reachable (a query, bounded in time), then opened: migrated, or its revision checked.
    A migration may take as long as it takes."""
    from dockyard.metadata.probe import describe

    meta = core.meta
    try:
        await _probe("database_url", describe(settings.metadata_url), meta.check)
    finally:
        await meta.close()
    await meta.open()


async def wait_for_dependencies(settings: Settings) -> None:
    """Return once every store answers; raise ``StartupError`` when one cannot be used."""
    check_data_dir(settings)
    core = build_registry(settings)
    started = time.monotonic()
    deadline = started + settings.startup_wait_seconds
    storage_setting = _storage_setting(settings)

    async def storage() -> None:
        await _probe(storage_setting, "the object store", lambda: core.blobs.check(write=True))

    pending: dict[str, Callable[[], Awaitable[None]]] = {
        "the database": lambda: _database(core, settings),
        "the blob store" if settings.storage == "filesystem" else "the bucket": storage,
    }
    down: dict[str, DependencyDown] = {}
    attempt = 0
    last_log = -LOG_EVERY
    try:
        while pending:
            names = list(pending)
            results = await asyncio.gather(*(pending[name]() for name in names), return_exceptions=True)
            down.clear()
            for name, result in zip(names, results, strict=True):
                if result is None:
                    del pending[name]
                elif isinstance(result, DependencyDown):
                    down[name] = result
                else:
                    raise result
            final = [d for d in down.values() if d.final]
            if final:
                raise StartupError("; ".join(str(d) for d in final))
            if not pending:
                break
            now = time.monotonic()
            if now >= deadline:
                waited = f"gave up after {settings.startup_wait_seconds:g} s (startup_wait_seconds)"
                raise StartupError("; ".join(str(d) for d in down.values()) + f"; {waited}")
            if now - last_log >= LOG_EVERY:
                last_log = now
                for name, problem in down.items():
                    log.warning(
                        "waiting for %s: %s (%.0f of %g s, startup_wait_seconds)",
                        name,
                        problem,
                        now - started,
                        settings.startup_wait_seconds,
                    )
            await asyncio.sleep(min(_BACKOFF[min(attempt, len(_BACKOFF) - 1)], max(deadline - now, 0.0)))
            attempt += 1
        if attempt:
            log.info("the database and the blob store answer (after %.1f s)", time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            await core.meta.close()
        with contextlib.suppress(Exception):
            await core.blobs.close()
