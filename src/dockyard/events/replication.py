"""Replication: what is pushed here is copied to another registry, driven by the events.

A rule is a delivery target like an HTTP sink (same queue, order per repository, back-off,
dead letters). Delivering a ``manifest.pushed`` event copies the manifest, by digest, from this
registry to the target with dockyard's own client (``dockyard copy``: resumable chunks, a
``HEAD`` skips blobs the target has, referrers along), tagging it there as here.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from dockyard.auth.access import matches
from dockyard.client.copy import copy_image
from dockyard.client.progress import Progress
from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry, RegistryError
from dockyard.metadata.outbox import TYPE_PREFIX, Delivery

if TYPE_CHECKING:
    from dockyard.config import ReplicationRule, ReplicationSettings, SyncRule

PREFIX = "replication."


def rule_wants(rule: ReplicationRule) -> tuple[frozenset[str], tuple[str, ...]]:
    types = {"manifest.pushed"} | ({"tag.deleted"} if rule.deletes else set())
    return frozenset(types), tuple(rule.repositories)


def remote_options(rule: ReplicationRule | SyncRule, user_agent: str) -> ClientOptions:
    """How the client reaches a rule's other registry: its credentials, TLS and timeout."""
    return ClientOptions(
        username=rule.username,
        password=rule.password.get_secret_value() if rule.password else None,
        ca_cert=rule.ca_cert,
        insecure=rule.insecure_tls,
        connect_timeout=rule.timeout_seconds,
        idle_timeout=rule.timeout_seconds,
        retries=3,
        user_agent=user_agent,
    )


class ReplicationTarget:
    """Copies pushed manifests to the rule's registry."""

    def __init__(self, rule: ReplicationRule, settings: ReplicationSettings, source_url: str) -> None:
        self.name = PREFIX + rule.name
        self.rule = rule
        self._tags = re.compile(rule.tags)
        source = ClientOptions(
            username=settings.source_username,
            password=settings.source_password.get_secret_value() if settings.source_password else None,
            insecure=True,  # ourselves, by the address we listen on (the name may not match)
            retries=3,
            user_agent="dockyard-replication",
        )
        target = remote_options(rule, "dockyard-replication")
        self._source = Registry(source_url, source)
        self._target = Registry(rule.url, target)

    def wanted(self, repository: str) -> bool:
        return any(matches(glob, repository) for glob in self.rule.repositories)

    async def deliver(self, delivery: Delivery) -> None:
        event: dict[str, Any] = json.loads(delivery.body)
        type_ = str(event["type"]).removeprefix(TYPE_PREFIX)
        data: dict[str, Any] = event["data"]
        repository: str = data["repository"]
        if not self.wanted(repository):
            return
        if type_ == "manifest.pushed":
            await self._copy(repository, data)
        elif type_ == "tag.deleted" and self.rule.deletes and self._tags.fullmatch(data["tag"]):
            await self._delete_tag(repository, data["tag"])

    async def _copy(self, repository: str, data: dict[str, Any]) -> None:
        tags = [t for t in data.get("tags", []) if self._tags.fullmatch(t)]
        digest: str = data["digest"]
        is_referrer = "subject" in data and self.rule.referrers
        if not tags and not (is_referrer or (self.rule.untagged and not data.get("tags"))):
            return  # nothing this rule copies (a tag it does not want)
        source = ImageReference(self._source.host, repository, digest=digest)
        destination_name = self.rule.prefix + repository
        progress = Progress(quiet=True)
        try:
            for tag in tags or [None]:
                destination = ImageReference(self._target.host, destination_name, tag=tag)
                await copy_image(
                    source,
                    destination,
                    self._source,
                    self._target,
                    progress=progress,
                    referrers=self.rule.referrers,
                )
        except RegistryError as exc:
            if exc.status == 404 and await self._gone(repository, digest):
                return  # deleted here since: nothing to copy (its deletion is an event of its own)
            raise

    async def _gone(self, repository: str, digest: str) -> bool:
        answer = await self._source.call(
            "HEAD",
            self._source.url(f"/v2/{repository}/manifests/{digest}"),
            scopes=[f"repository:{repository}:pull"],
            ok=(200, 404),
        )
        return answer.status == 404

    async def _delete_tag(self, repository: str, tag: str) -> None:
        name = self.rule.prefix + repository
        await self._target.call(
            "DELETE",
            self._target.url(f"/v2/{name}/manifests/{tag}"),
            scopes=[f"repository:{name}:delete"],
            ok=(202, 204, 404),
        )

    async def close(self) -> None:
        await self._source.close()
        await self._target.close()
