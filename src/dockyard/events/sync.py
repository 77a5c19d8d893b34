"""Scheduled sync: pull repositories from an upstream registry, new and moved tags only.

One node at a time runs a rule (a named lock), and only when no node has run it for
``interval_seconds`` (the last run's time is in the metadata store). A tag is copied when the
digest it points at upstream is not what it points at here: with dockyard's own client, from the
upstream to this registry over HTTP, so the copy is an ordinary push here (with its events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dockyard.client.copy import copy_image
from dockyard.client.progress import Progress
from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry
from dockyard.events.replication import remote_options
from dockyard.metadata.outbox import EventLog
from dockyard.registry.ports import MetadataStore

if TYPE_CHECKING:
    from dockyard.config import ReplicationSettings, SyncRule

log = logging.getLogger("dockyard.sync")
PREFIX = "sync."
_PAGE = 1000


class Syncer:
    """Runs one sync rule on its schedule until cancelled."""

    def __init__(
        self,
        rule: SyncRule,
        settings: ReplicationSettings,
        local_url: str,
        meta: MetadataStore,
        events: EventLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = PREFIX + rule.name
        self.rule = rule
        self._tags = re.compile(rule.tags)
        self._meta = meta
        self._events = events
        self._clock = clock
        self._upstream = Registry(rule.url, remote_options(rule, "dockyard-sync"))
        self._local = Registry(
            local_url,
            ClientOptions(
                username=settings.source_username,
                password=settings.source_password.get_secret_value() if settings.source_password else None,
                insecure=True,  # ourselves, by the address we listen on
                retries=3,
                user_agent="dockyard-sync",
            ),
        )

    async def run(self) -> None:
        try:
            while True:
                try:
                    async with self._meta.try_lock(self.name) as held:
                        last = await self._events.last_run(self.name) if held else None
                        if held and (last is None or self._clock() - last >= self.rule.interval_seconds):
                            await self.run_once()
                except Exception:
                    log.exception("sync %s failed", self.rule.name)
                await asyncio.sleep(min(self.rule.interval_seconds, 5.0))
        finally:
            with contextlib.suppress(Exception):
                await self._upstream.close()
                await self._local.close()

    async def run_once(self) -> int:
        """Copy every wanted tag that is new or moved upstream; returns how many were copied."""
        copied = 0
        error: str | None = None
        try:
            for repository in self.rule.repositories:
                for tag in await self._upstream_tags(repository):
                    if self._tags.fullmatch(tag) and await self._copy_if_moved(repository, tag):
                        copied += 1
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await self._events.record_run(self.name, copied, error, self._clock())
        if copied:
            log.info("sync %s: copied %d tag(s) from %s", self.rule.name, copied, self.rule.url)
        return copied

    async def _upstream_tags(self, repository: str) -> list[str]:
        tags: list[str] = []
        last: str | None = None
        while True:
            query = {"n": str(_PAGE), **({"last": last} if last else {})}
            answer = await self._upstream.call(
                "GET",
                self._upstream.url(f"/v2/{repository}/tags/list").with_query(query),
                scopes=[f"repository:{repository}:pull"],
                ok=(200, 404),
            )
            if answer.status == 404:
                return tags
            page = [t for t in (answer.json().get("tags") or []) if isinstance(t, str)]
            tags += page
            if not page or answer.header("Link") is None:
                return tags
            last = page[-1]

    async def _copy_if_moved(self, repository: str, tag: str) -> bool:
        answer = await self._upstream.call(
            "HEAD",
            self._upstream.url(f"/v2/{repository}/manifests/{tag}"),
            scopes=[f"repository:{repository}:pull"],
            headers={"Accept": _ACCEPT},
            ok=(200, 404),
        )
        upstream_digest = answer.header("Docker-Content-Digest")
        if answer.status == 404:
            return False
        local_name = self.rule.prefix + repository
        here = await self._meta.resolve_tag(local_name, tag)
        if here is not None and upstream_digest is not None and str(here.digest) == upstream_digest:
            return False
        source = ImageReference(self._upstream.host, repository, tag=tag, digest=upstream_digest)
        destination = ImageReference(self._local.host, local_name, tag=tag)
        await copy_image(
            source,
            destination,
            self._upstream,
            self._local,
            progress=Progress(quiet=True),
            referrers=self.rule.referrers,
        )
        return True


_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
