"""The one schema, in SQLAlchemy Core, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Names and tags compare byte-wise ("ASCIIbetical", spec: "Listing Tags"): the "C" collation on
# PostgreSQL, SQLite's default BINARY collation.
NAME = String(255).with_variant(String(255, collation="C"), "postgresql")
TAG = String(128).with_variant(String(128, collation="C"), "postgresql")
DIGEST = String(200)

repositories = Table(
    "repositories",
    metadata,
    Column("name", NAME, primary_key=True),
    Column("created_at", Float, nullable=False),
)

# Every blob the registry has bytes for, once, by digest.
blobs = Table(
    "blobs",
    metadata,
    Column("digest", DIGEST, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Which blobs each repository may see (ARCHITECTURE.md invariant 1: a mount adds a link).
repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column("repository", NAME, nullable=False),
    Column("digest", DIGEST, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("repository", "digest"),
    Index("ix_repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("repository", NAME, nullable=False),
    Column("digest", DIGEST, nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("artifact_type", String(255)),
    Column("subject", DIGEST),
    Column("annotations", Text),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("repository", "digest"),
    Index("ix_manifests_subject", "repository", "subject"),
    Index("ix_manifests_digest", "digest"),  # is a stored digest a manifest anywhere (GC, fsck)
)

# What each manifest references: config and layers ("blob"), index children ("manifest").
manifest_refs = Table(
    "manifest_refs",
    metadata,
    Column("repository", NAME, nullable=False),
    Column("manifest", DIGEST, nullable=False),
    Column("digest", DIGEST, nullable=False),
    Column("kind", String(16), nullable=False),
    PrimaryKeyConstraint("repository", "manifest", "digest", "kind"),
    Index("ix_manifest_refs_digest", "digest"),
    # is a digest referenced within its repository (GC's mark and sweep): covering, so SQLite
    # prefers it to the primary key's repository prefix
    Index("ix_manifest_refs_repository_digest", "repository", "digest", "kind", "manifest"),
)

tags = Table(
    "tags",
    metadata,
    Column("repository", NAME, nullable=False),
    Column("name", TAG, nullable=False),
    Column("digest", DIGEST, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("repository", "name"),
    Index("ix_tags_digest", "repository", "digest"),
)

# One row per garbage collection (for /metrics and `dockyard gc` history).
gc_runs = Table(
    "gc_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", Float, nullable=False),
    Column("duration", Float, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("manifests_deleted", Integer, nullable=False),
    Column("tags_deleted", Integer, nullable=False),
    Column("links_deleted", Integer, nullable=False),
    Column("blobs_deleted", Integer, nullable=False),
    Column("bytes_freed", BigInteger, nullable=False),
)

# Failed logins per client address and per user, for the limit every worker and node shares.
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(300), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_login_failures_key_at", "key", "at"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("repository", NAME, nullable=False),
    Column("staged_bytes", BigInteger, nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("owner", String(255)),
    Column("backend_state", Text, nullable=False),
    # how many requests found the session held by another (a stalled holder then yields)
    Column("takeover_requests", Integer, nullable=False, server_default="0"),
    Index("ix_uploads_repository", "repository"),
    Index("ix_uploads_updated_at", "updated_at"),
)

# -- events (metadata/outbox.py) ------------------------------------------------------------------

# A 64-bit sequence on PostgreSQL; SQLite's INTEGER PRIMARY KEY (its rowid) is 64-bit already.
SEQ = BigInteger().with_variant(Integer, "sqlite")

# The outbox: one row per event, written in the transaction of the change it reports. ``body``
# is the CloudEvents envelope as it will be sent, fixed when written (its id and time included).
events = Table(
    "events",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("type", String(100), nullable=False),
    Column("repository", NAME, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_events_created_at", "created_at"),
)

# One row per event and sink (or replication rule) it goes to, written with the event.
# ``state``: pending, delivered or dead. A sink receives a repository's events in ``seq`` order.
event_deliveries = Table(
    "event_deliveries",
    metadata,
    Column("sink", String(100), nullable=False),
    Column("seq", SEQ, nullable=False),
    Column("repository", NAME, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("last_error", Text),
    PrimaryKeyConstraint("sink", "seq"),
    Index("ix_event_deliveries_queue", "sink", "state", "repository", "seq"),
    Index("ix_event_deliveries_seq", "seq"),
)

# Counters per sink for /metrics (they outlive the rows purged after the retention time).
event_sink_stats = Table(
    "event_sink_stats",
    metadata,
    Column("sink", String(100), primary_key=True),
    Column("delivered", BigInteger, nullable=False, server_default="0"),
    Column("failed", BigInteger, nullable=False, server_default="0"),
    Column("dead", BigInteger, nullable=False, server_default="0"),
    Column("last_success_at", Float),
    Column("last_failure_at", Float),
    Column("last_error", Text),
)
