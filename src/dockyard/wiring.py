"""Builds the adapters the settings name and the core over them (for the app and the CLI)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dockyard.auth.access import matches
from dockyard.clock import wall_clock
from dockyard.metadata.outbox import Destination, Outbox
from dockyard.metadata.store import SqlMetadataStore
from dockyard.registry.ports import BlobStore, Upstream
from dockyard.registry.pullthrough import PullThroughRegistry
from dockyard.registry.service import Policy, Registry
from dockyard.storage.filesystem import FilesystemBlobStore

if TYPE_CHECKING:
    from dockyard.config import Settings
    from dockyard.events.delivery import Deliverer


def policy_from(settings: Settings) -> Policy:
    return Policy(
        delete_enabled=settings.delete_enabled,
        manifest_max_bytes=settings.manifest_max_bytes,
        index_requires_children=settings.index_requires_children,
        upload_ttl_seconds=settings.upload_ttl_seconds,
        max_uploads_per_repository=settings.max_uploads_per_repository,
        max_page_size=settings.max_page_size,
        link_refresh_seconds=settings.gc.grace_seconds / 2,
        takeover_after_seconds=settings.takeover_after_seconds,
        pull_events=settings.events_enabled and settings.events.manifest_pulls,
    )


def missing_packages(settings: Settings) -> str | None:
    """What to install for the configured backends, or None when everything is there."""
    import importlib.util

    needed = []
    if settings.storage == "s3" and importlib.util.find_spec("aiobotocore") is None:
        needed.append("s3")
    postgres = settings.metadata_url.startswith(("postgres", "postgresql"))
    if postgres and importlib.util.find_spec("asyncpg") is None:
        needed.append("postgres")
    return f"pip install 'dockyard[{','.join(needed)}]'" if needed else None


def build_blob_store(settings: Settings) -> BlobStore:
    """The configured bytes store: a directory, or an S3-compatible bucket."""
    if settings.storage == "s3":
        from dockyard.storage.s3 import S3BlobStore, S3Options

        s3 = settings.s3
        return S3BlobStore(
            S3Options(
                bucket=s3.bucket,
                prefix=s3.prefix,
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                access_key_id=s3.access_key_id,
                secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
                addressing_style=s3.addressing_style,
                redirect=s3.redirect,
                redirect_expiry_seconds=s3.redirect_expiry_seconds,
                public_endpoint_url=s3.public_endpoint_url,
                part_size=s3.part_size,
                connect_timeout=s3.connect_timeout_seconds,
                read_timeout=s3.read_timeout_seconds,
                max_attempts=s3.max_attempts,
                direct_uploads=s3.direct_uploads,
                direct_upload_url_expiry_seconds=s3.direct_upload_url_expiry_seconds,
                direct_upload_max_bytes=s3.direct_upload_max_bytes,
            )
        )
    return FilesystemBlobStore(settings.data_dir)


def build_metadata_store(settings: Settings, migrate: bool | None = None) -> SqlMetadataStore:
    """The configured facts store (not yet opened), with its timeouts."""
    return SqlMetadataStore(
        settings.metadata_url,
        migrate=settings.database_auto_migrate if migrate is None else migrate,
        connect_timeout=settings.database_connect_timeout_seconds,
        statement_timeout=settings.database_statement_timeout_seconds,
        cache_ttl_seconds=settings.cache_ttl_seconds,
    )


def build_registry(settings: Settings) -> Registry:
    """The core over the configured bytes and facts stores (not yet opened: ``meta.open()``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = build_blob_store(settings)
    meta = build_metadata_store(settings)
    if settings.events_enabled:
        meta.outbox = build_outbox(settings)
    if settings.proxy.remote_url:
        proxy = settings.proxy
        return PullThroughRegistry(
            blobs,
            meta,
            build_upstream(settings),
            policy_from(settings),
            tag_ttl_seconds=proxy.tag_ttl_seconds,
            stall_timeout=settings.body_timeout_seconds,
        )
    return Registry(blobs, meta, policy_from(settings))


def build_upstream(settings: Settings) -> Upstream:
    """The upstream registry of a pull-through cache (``proxy.remote_url``)."""
    from dockyard.client.registry import ClientOptions
    from dockyard.upstream import HttpUpstream

    proxy = settings.proxy
    assert proxy.remote_url is not None
    options = ClientOptions(
        username=proxy.username,
        password=proxy.password.get_secret_value() if proxy.password else None,
        ca_cert=proxy.ca_cert,
        insecure=proxy.insecure_tls,
        connect_timeout=proxy.timeout_seconds,
        idle_timeout=proxy.timeout_seconds,
        retries=1,
        user_agent="dockyard-pull-through",
    )
    return HttpUpstream(proxy.remote_url, options, settings.manifest_max_bytes)


def _destination(name: str, types: frozenset[str], globs: tuple[str, ...]) -> Destination:
    def wants(type_: str, repository: str) -> bool:
        return type_ in types and any(matches(glob, repository) for glob in globs)

    return Destination(name, wants)


def build_outbox(settings: Settings) -> Outbox:
    """What records events: the envelope's source, and the sinks and rules each event goes to."""
    from dockyard.events.replication import PREFIX, rule_wants
    from dockyard.events.sinks import sink_wants

    destinations = [_destination(sink.name, *sink_wants(sink)) for sink in settings.events.sinks]
    destinations += [
        _destination(PREFIX + rule.name, *rule_wants(rule)) for rule in settings.replication.rules
    ]
    source = settings.events.source or settings.local_url
    return Outbox(source, destinations, manifest_pulls=settings.events.manifest_pulls, clock=wall_clock())


def build_deliverer(settings: Settings, meta: SqlMetadataStore) -> Deliverer | None:
    """The delivery loop over the configured sinks and replication rules (None: nothing to do)."""
    from dockyard.events.delivery import Deliverer, Target
    from dockyard.events.replication import ReplicationTarget
    from dockyard.events.sinks import HttpSink

    targets: list[Target] = [HttpSink(sink) for sink in settings.events.sinks]
    source_url = settings.replication.source_url or settings.local_url
    targets += [
        ReplicationTarget(rule, settings.replication, source_url) for rule in settings.replication.rules
    ]
    if not targets or not settings.events_enabled:
        return None
    deliverer = Deliverer(meta, meta.event_log(), targets, settings.events, clock=wall_clock())
    if meta.outbox is not None:
        meta.outbox.on_write = deliverer.wake
    return deliverer


def build_background(settings: Settings, meta: SqlMetadataStore) -> list[Coroutine[Any, Any, None]]:
    """What runs beside the server for events and replication: the delivery loop, the syncs."""
    from dockyard.events.sync import Syncer

    jobs: list[Coroutine[Any, Any, None]] = []
    deliverer = build_deliverer(settings, meta)
    if deliverer is not None:
        jobs.append(deliverer.run())
    source_url = settings.replication.source_url or settings.local_url
    for rule in settings.replication.sync:
        syncer = Syncer(rule, settings.replication, source_url, meta, meta.event_log(), clock=wall_clock())
        jobs.append(syncer.run())
    return jobs
