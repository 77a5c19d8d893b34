"""What the browsing pages ask of the registry: pages of repositories and tags with their figures,
only what the caller may pull, and an image's configuration in a reader's words."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.ports import RepositorySummary, TagSummary
from dockyard.registry.service import Registry

IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
MOST_CONFIG_BYTES = 1 << 20  # a config larger than this is not read for its page


@dataclass(frozen=True)
class RepositoryPage:
    repositories: list[RepositorySummary]
    next_cursor: str | None  # the page after this one: a name (by name) or a position (by push)


async def repository_page(
    core: Registry,
    limit: int,
    *,
    cursor: str | None = None,
    containing: str | None = None,
    by: str = "name",
    may_read: Callable[[str], bool] | None = None,
) -> RepositoryPage:
    """Up to ``limit`` repositories the caller may pull, by name or by last push (newest
    first), optionally only names containing ``containing``."""
    pushed = by == "pushed"
    position = int(cursor) if pushed and cursor and cursor.isdigit() else 0
    after = None if pushed else cursor
    batch = max(limit + 1, 100)
    found: list[tuple[str, int]] = []  # name, its position in the unfiltered order
    while len(found) <= limit:
        names = await core.meta.repository_names(
            batch, after=after, offset=position, containing=containing or None, by=by
        )
        for i, name in enumerate(names):
            if may_read is None or may_read(name):
                found.append((name, position + i))
        if len(names) < batch:
            break
        position += len(names)
        after = names[-1]
    shown = found[:limit]
    next_cursor = None
    if len(found) > limit:
        next_cursor = str(found[limit][1]) if pushed else shown[-1][0]
    summaries = await core.meta.repository_summaries([n for n, _ in shown])
    return RepositoryPage([summaries[n] for n, _ in shown], next_cursor)


async def tag_page(
    core: Registry, repository: str, limit: int, offset: int = 0, by: str = "pushed"
) -> tuple[list[TagSummary], dict[Digest, int], bool]:
    """A page of tags (by last push, newest first, or by name), how many manifests refer to
    each tag's manifest (signatures, SBOMs), and whether more tags follow."""
    if not await core.meta.repository_exists(repository):
        raise errors.RegistryError(errors.NAME_UNKNOWN, detail={"name": repository})
    tags = await core.meta.tag_summaries(repository, limit + 1, offset, by)
    shown = tags[:limit]
    referrers = await core.meta.referrer_counts(repository, sorted({t.digest for t in shown}, key=str))
    return shown, referrers, len(tags) > limit


@dataclass(frozen=True)
class ImageConfig:
    """What people look for in an image's configuration."""

    created: str | None = None
    platform: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    working_dir: str | None = None
    exposed_ports: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


async def image_config(
    core: Registry, repository: str, digest: Digest, media_type: str, size: int
) -> ImageConfig | None:
    """The image configuration blob, read and summarised; None when it is not an image config,
    too large, not linked here, or not what it claims to be."""
    if media_type not in IMAGE_CONFIG_TYPES or size > MOST_CONFIG_BYTES:
        return None
    if await core.meta.linked_blob(repository, digest) is None:
        return None
    try:
        raw = json.loads(await core.blobs.read_all(digest))
    except (ValueError, OSError):
        return None
    return parse_image_config(raw)


def parse_image_config(raw: object) -> ImageConfig | None:
    if not isinstance(raw, dict):
        return None
    run = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    assert isinstance(run, dict)

    def strings(value: object) -> list[str] | None:
        return [str(v) for v in value] if isinstance(value, list) else None

    platform = "/".join(str(raw[k]) for k in ("os", "architecture", "variant") if isinstance(raw.get(k), str))
    labels = run.get("Labels")
    ports = run.get("ExposedPorts")
    history = raw.get("history")
    return ImageConfig(
        created=raw["created"] if isinstance(raw.get("created"), str) else None,
        platform=platform or None,
        entrypoint=strings(run.get("Entrypoint")),
        cmd=strings(run.get("Cmd")),
        user=_text(run, "User"),
        working_dir=_text(run, "WorkingDir"),
        exposed_ports=sorted(str(p) for p in ports) if isinstance(ports, dict) else [],
        env=strings(run.get("Env")) or [],
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        history=[h for h in history if isinstance(h, dict)] if isinstance(history, list) else [],
    )


def _text(run: dict[str, Any], key: str) -> str | None:
    value = run.get(key)
    return value if isinstance(value, str) and value else None
