"""Builds the adapters the settings name and the core over them (for the app and the CLI)."""

from __future__ import annotations

from dockyard.config import Settings
from dockyard.metadata.store import SqlMetadataStore
from dockyard.registry.service import Policy, Registry
from dockyard.storage.filesystem import FilesystemBlobStore


def policy_from(settings: Settings) -> Policy:
    return Policy(
        delete_enabled=settings.delete_enabled,
        manifest_max_bytes=settings.manifest_max_bytes,
        index_requires_children=settings.index_requires_children,
        upload_ttl_seconds=settings.upload_ttl_seconds,
        max_uploads_per_repository=settings.max_uploads_per_repository,
        max_page_size=settings.max_page_size,
        link_refresh_seconds=settings.gc.grace_seconds / 2,
    )


def build_registry(settings: Settings) -> Registry:
    """The core over the configured bytes and facts stores (not yet opened: ``meta.open()``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Registry(
        FilesystemBlobStore(settings.data_dir),
        SqlMetadataStore(settings.metadata_url),
        policy_from(settings),
    )
