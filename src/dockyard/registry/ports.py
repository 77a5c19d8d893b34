"""The ports of the core: bytes (a content-addressed blob store), facts (metadata) and, for a
pull-through cache, the upstream registry.

Adapters in ``dockyard.storage``, ``dockyard.metadata`` and ``dockyard.upstream`` implement these
protocols; the core only ever sees these interfaces and the value types below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dockyard.registry.digests import Digest

# ---------------------------------------------------------------------------------------------
# value types


@dataclass(frozen=True)
class ManifestRecord:
    """What the registry knows about one manifest in one repository."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None = None  # the referrers API's artifactType (already resolved)
    subject: Digest | None = None
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class ManifestRef:
    """An edge from a manifest to something it references (for referrers, GC and checks)."""

    digest: Digest
    kind: str  # "blob" (config, layers, blobs) or "manifest" (index children)
    required: bool = True  # must exist in the repository (not for non-distributable layers)


@dataclass
class UploadSession:
    """An upload session's persisted state. ``offset`` counts the bytes staged so far."""

    id: str
    repository: str
    offset: int = 0
    algorithm: str = "sha256"
    created_at: float = 0.0
    updated_at: float = 0.0
    owner: str | None = None  # the identity that opened it (sessions are not transferable)
    backend_state: dict[str, Any] = field(default_factory=dict)
    # how many requests found the session held by another (read-only here: Registry._append)
    takeover_requests: int = 0


@dataclass
class RepositoryView:
    """What garbage collection needs to know of one repository's manifests."""

    created: dict[Digest, float]  # manifest -> when recorded
    subjects: dict[Digest, Digest]  # referrer -> its subject
    children: dict[Digest, set[Digest]]  # index -> its child manifests
    tagged: set[Digest]


@dataclass(frozen=True)
class RepositorySummary:
    """A repository at a glance, for people browsing."""

    name: str
    tags: int
    manifests: int
    stored_bytes: int  # its manifests and the blobs it links (a blob shared with others counts here too)
    last_push: float | None  # when a manifest was last pushed or a tag last moved


@dataclass(frozen=True)
class TagSummary:
    tag: str
    digest: Digest
    updated_at: float  # when the tag was last pushed or moved


@dataclass(frozen=True)
class GcRun:
    """One garbage collection, as recorded."""

    started_at: float
    duration: float
    dry_run: bool
    manifests_deleted: int
    tags_deleted: int
    links_deleted: int
    blobs_deleted: int
    bytes_freed: int


@dataclass(frozen=True)
class TagRecord:
    repository: str
    tag: str
    digest: Digest


class DependencyDown(Exception):
    """A store this node depends on cannot be used now (a probe's answer: ``check``).

    ``setting`` names what the operator would change (``database_url``, ``s3.secret_access_key``);
    ``final`` says waiting will not help (credentials rejected, no such bucket or database), as
    opposed to a store that is unreachable or starting. The message names hosts, never secrets.
    """

    def __init__(self, setting: str, message: str, final: bool = False) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message
        self.final = final


# ---------------------------------------------------------------------------------------------
# bytes


@dataclass(frozen=True)
class StoredPart:
    """One part of a direct upload as the object store holds it (its ``ListParts`` answer)."""

    number: int
    size: int
    etag: str = ""
    ambiguous: bool = False  # the store holds two versions and cannot say which is newer


@dataclass(frozen=True)
class PartUrl:
    """Where a client sends one part of a direct upload: ``PUT url`` with exactly ``headers``."""

    number: int
    size: int
    url: str
    headers: dict[str, str]


class DirectUploads(Protocol):
    """Clients upload a session's bytes straight to the object store (docs/direct-uploads.md).

    The session stays at the registry; the store holds its parts. After ``complete`` the staged
    bytes are read and committed with the ordinary ``staging_read`` / ``staging_commit``.
    """

    kind: str  # the protocol's name, e.g. "s3-multipart"
    min_part_size: int  # every part but the last
    max_part_size: int
    max_parts: int
    max_size: int  # the largest blob a direct session may complete
    url_expiry_seconds: int

    def is_direct(self, session: UploadSession) -> bool: ...

    def is_completed(self, session: UploadSession) -> bool:
        """Whether ``complete`` has joined the parts (the session then only awaits publishing)."""
        ...

    async def open(self, session: UploadSession) -> None:
        """Start the session's upload in the store; records it in ``session.backend_state``."""
        ...

    async def part_urls(self, session: UploadSession, parts: Sequence[StoredPart]) -> list[PartUrl]: ...

    async def list_parts(self, session: UploadSession) -> list[StoredPart] | None:
        """The parts the store holds, by number; None when the upload is no longer open there."""
        ...

    async def complete(self, session: UploadSession, parts: Sequence[StoredPart] | None) -> int:
        """Join ``parts`` (None: the upload was already completed) into the staged bytes; their size."""
        ...


class StagingWriter(Protocol):
    """Appends to an upload session's staged bytes."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> int:
        """Flush what was written; return the staged size (what a restart would see)."""
        ...


class BlobStore(Protocol):
    """Opaque bytes by digest, plus staging areas for upload sessions. Never parses JSON."""

    #: the smallest chunk the backend can append (S3 parts), or None
    chunk_min_length: int | None
    #: direct-to-store uploads, where the backend offers them (None: it does not)
    direct: DirectUploads | None

    async def stat(self, digest: Digest) -> int | None:
        """The stored size, or None when the bytes are not there."""
        ...

    def local_path(self, digest: Digest) -> Path | None:
        """A local file holding the bytes, for sendfile; None on remote backends."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the bytes (or a range of them)."""
        ...

    async def read_all(self, digest: Digest) -> bytes:
        """Read small content (manifests) whole."""
        ...

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store small content durably under its digest (the caller has verified the digest)."""
        ...

    async def delete(self, digest: Digest) -> None: ...

    async def redirect_url(self, digest: Digest) -> str | None:
        """A URL a client may fetch the bytes from directly, or None to stream through us."""
        ...

    async def staging_open(self, session: UploadSession) -> StagingWriter:
        """Open the staging area for appending at ``session.offset`` (dropping anything past it)."""
        ...

    async def staging_size(self, session: UploadSession) -> int | None: ...

    def staging_read(self, session: UploadSession) -> AsyncIterator[bytes]: ...

    async def staging_commit(self, session: UploadSession, digest: Digest) -> None:
        """Make the staged bytes durable and move them into place under ``digest``."""
        ...

    async def staging_delete(self, session: UploadSession) -> None: ...

    def iter_digests(self) -> AsyncIterator[Digest]:
        """Every digest stored (for fsck and GC), in digest order: by algorithm, then hex."""
        ...

    async def age(self, digest: Digest) -> float | None:
        """Seconds since the bytes were stored, or None when absent."""
        ...

    async def staging_ids(self) -> list[str]:
        """The upload ids that have a staging area."""
        ...

    async def close(self) -> None:
        """Release connections (an object store's client); the store is not used after."""
        ...

    async def check(self, write: bool = False) -> None:
        """Raise ``DependencyDown`` unless the store answers now; ``write``: also store and
        delete a probe object (start-up: the credentials may write). Cheap without ``write``."""
        ...


# ---------------------------------------------------------------------------------------------
# facts


class MetadataStore(Protocol):
    """Repositories, links, manifests, tags, references and upload sessions."""

    async def open(self) -> None:
        """Connect and bring the schema to this version (or check it is there); raises
        ``DependencyDown`` when the database cannot be used."""
        ...

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise ``DependencyDown`` unless the database answers a query now (readiness)."""
        ...

    # repositories and blob links
    async def repository_exists(self, repository: str) -> bool: ...

    async def list_repositories(self, limit: int, last: str | None) -> list[str]: ...

    async def linked_blob(self, repository: str, digest: Digest) -> tuple[int, float] | None:
        """The blob's size and when the repository's link to it was last made or used."""
        ...

    async def touch_link(self, repository: str, digest: Digest) -> None:
        """Mark the link as used now (garbage collection's grace period starts again)."""
        ...

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None: ...

    async def blob_size(self, digest: Digest) -> int | None:
        """The size of a blob known to the registry in any repository."""
        ...

    async def repositories_with_blob(self, digest: Digest, limit: int) -> list[str]:
        """Repositories that link the blob (for mounts without ``from``)."""
        ...

    async def link_blob(
        self,
        repository: str,
        digest: Digest,
        size: int,
        mounted_from: str | None = None,
        mounted: bool = False,
        ending_upload: str | None = None,
    ) -> None:
        """Link a blob into a repository; ``mounted``: a mount (from ``mounted_from``, when known),
        reported as an event with the link; ``ending_upload``: the upload session this publishes,
        removed in the same transaction."""
        ...

    async def unlink_blob(self, repository: str, digest: Digest) -> bool: ...

    async def missing_blobs(self, repository: str, digests: Sequence[Digest]) -> list[Digest]: ...

    async def missing_manifests(self, repository: str, digests: Sequence[Digest]) -> list[Digest]: ...

    # manifests and tags
    async def put_manifest(
        self,
        repository: str,
        record: ManifestRecord,
        refs: Sequence[ManifestRef],
        tags: Sequence[str],
    ) -> None:
        """Record a manifest (idempotent) and point ``tags`` at it, in one transaction."""
        ...

    async def get_manifest(self, repository: str, digest: Digest) -> ManifestRecord | None: ...

    async def has_manifest(self, digest: Digest) -> bool:
        """Whether any repository records a manifest with this digest."""
        ...

    async def resolve_tag(self, repository: str, tag: str) -> ManifestRecord | None: ...

    async def tag_updated_at(self, repository: str, tag: str) -> float | None:
        """When the tag was last moved (or, in a pull-through cache, confirmed by the upstream)."""
        ...

    async def touch_tag(self, repository: str, tag: str, digest: Digest) -> bool:
        """Mark the tag as confirmed now, if it still points at ``digest``."""
        ...

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Remove a manifest and every tag that points at it."""
        ...

    async def delete_tag(self, repository: str, tag: str) -> bool: ...

    async def list_tags(self, repository: str, limit: int, last: str | None) -> list[str]: ...

    async def tags_of_manifest(self, repository: str, digest: Digest, limit: int) -> list[str]:
        """The repository's tags that point at the manifest, in byte order (at most ``limit``)."""
        ...

    async def list_referrers(
        self, repository: str, subject: Digest, artifact_type: str | None
    ) -> list[ManifestRecord]: ...

    # upload sessions
    async def create_upload(self, session: UploadSession) -> None: ...

    async def get_upload(self, upload_id: str) -> UploadSession | None: ...

    async def save_upload(self, session: UploadSession) -> None: ...

    async def touch_upload(self, upload_id: str, at: float) -> None:
        """Mark the session as active at ``at`` (nothing else of its row changes)."""
        ...

    async def delete_upload(self, upload_id: str) -> None: ...

    async def request_takeover(self, upload_id: str) -> None:
        """Count a request that found the session held by another (see Registry._append)."""
        ...

    async def takeover_requests(self, upload_id: str) -> int:
        """How many requests have found the session held so far."""
        ...

    async def count_uploads(self, repository: str) -> int: ...

    async def stale_uploads(self, updated_before: float) -> list[UploadSession]: ...

    # whole-store views (fsck, GC)
    async def recorded_digests(self, after: Digest | None, limit: int = 1000) -> list[Digest]:
        """The next ``limit`` digests after ``after``, in digest order, that a blob record or a
        manifest in any repository records."""
        ...

    async def dangling_tags(self) -> list[TagRecord]:
        """Tags whose manifest is not recorded in their repository (must never exist)."""
        ...

    async def unrecorded_links(self) -> list[tuple[str, Digest]]:
        """Repository links to blobs with no blob record (must never exist)."""
        ...

    async def upload_ids(self) -> set[str]: ...

    async def forget_blob(self, digest: Digest) -> None:
        """Drop a blob's record and every repository's link to it."""
        ...

    def lock_blob(self, digest: Digest) -> AbstractAsyncContextManager[None]:
        """Serialise what makes a blob's bytes needed (a commit, a mount, a manifest push) with
        garbage collection deleting them. Waits for the lock; dies with its holder."""
        ...

    def try_lock(self, name: str) -> AbstractAsyncContextManager[bool]:
        """A named lock across workers and nodes (e.g. one garbage collector at a time)."""
        ...

    # garbage collection (metadata/gcqueries.py): set-based marks streamed in chunks, conditional
    # deletes per chunk (each re-checks its condition in its transaction)
    def gc_doomed_manifests(
        self, first: str, last: str, cutoff: float, delete_untagged: bool, keep_referrers: bool
    ) -> AsyncIterator[list[tuple[str, Digest]]]:
        """Chunks of the manifests of repositories ``first``…``last`` (by name, inclusive) that
        nothing keeps and that are older than ``cutoff``; indexes before their children."""
        ...

    def gc_unreferenced_links(
        self, first: str, last: str, cutoff: float
    ) -> AsyncIterator[list[tuple[str, Digest]]]:
        """Chunks of the links of repositories ``first``…``last`` older than ``cutoff`` that no
        manifest of their repository references."""
        ...

    async def gc_unlinked_blobs(self, after: str | None, limit: int = 500) -> list[tuple[Digest, int]]:
        """A page of blob records (by digest, after ``after``) that no repository links."""
        ...

    async def repositories_with_manifest(self, digest: Digest, limit: int = 1000) -> list[str]:
        """Up to ``limit`` repositories that record the manifest ``digest``, by name."""
        ...

    async def gc_recorded(self, digests: Sequence[Digest]) -> set[Digest]:
        """Those of ``digests`` that something records: a blob record, or a manifest anywhere."""
        ...

    async def gc_repository_view(self, repository: str) -> RepositoryView:
        """One repository's manifests, tags and edges (a dry run that imagines tags gone)."""
        ...

    async def gc_delete_manifests(
        self, doomed: Sequence[tuple[str, Digest]], cutoff: float
    ) -> list[tuple[str, Digest]]:
        """Delete those of ``doomed`` that are still untagged, older than ``cutoff`` and
        referenced by no manifest outside ``doomed``; returns the ones deleted."""
        ...

    async def gc_delete_links(
        self, links: Sequence[tuple[str, Digest]], cutoff: float
    ) -> list[tuple[str, Digest]]:
        """Delete those of ``links`` still older than ``cutoff`` and still unreferenced."""
        ...

    async def blob_recorded(self, digest: Digest) -> bool:
        """Whether the blob has a record (linked or not)."""
        ...

    async def gc_forget_blobs(self, digests: Sequence[Digest]) -> list[tuple[Digest, int]]:
        """Drop the records of those blobs that still nothing links and that are no manifest's
        digest; returns the ones dropped. The caller holds their locks (``lock_blobs``)."""
        ...

    def lock_blobs(self, digests: Sequence[Digest]) -> AbstractAsyncContextManager[None]:
        """``lock_blob`` of every one of ``digests``, held together (only the collector, of
        which one runs at a time, holds more than one)."""
        ...

    async def delete_tag_if(self, repository: str, tag: str, digest: Digest) -> bool:
        """Delete a tag only if it still points at ``digest``."""
        ...

    async def list_tag_records(self, repository: str) -> list[tuple[str, Digest, float]]:
        """Every tag of a repository with its digest and when it was last moved."""
        ...

    async def upload_ids_of(self, repository: str) -> list[str]: ...

    async def delete_repository(self, repository: str) -> bool:
        """Remove a repository's tags, manifests, links and sessions (bytes stay for GC)."""
        ...

    async def record_login_failure(self, keys: list[str]) -> None:
        """Count a failed login against each key (client address, user)."""
        ...

    async def login_retry_after(self, keys: list[str], limit: int, window: float) -> float | None:
        """Seconds until the keys may try again, when any has ``limit`` failures in ``window``."""
        ...

    async def record_gc_run(self, run: dict[str, Any]) -> None: ...

    async def record_pull(self, repository: str, record: ManifestRecord, reference: str) -> None:
        """Report a manifest pull as an event, when events record pulls (else nothing)."""
        ...

    async def statistics(self) -> dict[str, float]:
        """Figures for /metrics: bytes and counts stored, the last collection."""
        ...

    # browsing (metadata/browsing.py)
    async def repository_names(
        self,
        limit: int,
        *,
        after: str | None = None,
        offset: int = 0,
        containing: str | None = None,
        by: str = "name",
    ) -> list[str]:
        """By name after ``after``, or by last push from ``offset``; optionally a substring."""
        ...

    async def repository_summaries(self, names: Sequence[str]) -> dict[str, RepositorySummary]: ...

    async def tag_summaries(
        self, repository: str, limit: int, offset: int = 0, by: str = "pushed"
    ) -> list[TagSummary]: ...

    async def referrer_counts(self, repository: str, subjects: Sequence[Digest]) -> dict[Digest, int]: ...

    async def gc_history(self, limit: int) -> list[GcRun]: ...

    async def recent_uploads(self, limit: int) -> list[UploadSession]: ...

    def lock_upload(self, upload_id: str) -> AbstractAsyncContextManager[bool]:
        """Try to become the session's one writer; yields False when another writer holds it.

        The lock must die with its holder (a killed process never leaves a session locked).
        """
        ...


# ---------------------------------------------------------------------------------------------
# the upstream registry (pull-through cache)


class UpstreamUnavailable(Exception):
    """The upstream registry gave no usable answer: unreachable, timed out, a 5xx, or it refused
    our credentials. A cached copy may still be served."""


@dataclass(frozen=True)
class UpstreamManifest:
    """A manifest as the upstream registry described it; ``body`` is None after a HEAD."""

    digest: Digest
    media_type: str
    body: bytes | None = None


@dataclass(frozen=True)
class UpstreamBlob:
    """A blob being read from the upstream registry: its declared size and its bytes."""

    size: int | None
    chunks: AsyncIterator[bytes]  # raises UpstreamUnavailable if the stream breaks


class Upstream(Protocol):
    """The registry a pull-through cache serves from. 404 is None; any other failure raises
    ``UpstreamUnavailable``. The upstream is trusted for nothing: the core verifies every digest."""

    async def resolve_manifest(self, repository: str, tag: str) -> UpstreamManifest | None:
        """The digest and media type a tag points at now (a HEAD; the body too if the upstream
        sent no digest and a GET was needed)."""
        ...

    async def fetch_manifest(self, repository: str, digest: Digest) -> UpstreamManifest | None:
        """A manifest's bytes, by digest."""
        ...

    def open_blob(self, repository: str, digest: Digest) -> AbstractAsyncContextManager[UpstreamBlob | None]:
        """Start reading a blob (redirects followed); the bytes stream until the context ends."""
        ...

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        """A blob's size (a HEAD), without reading it."""
        ...

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool] | None:
        """A page of the repository's tags upstream, and whether more follow."""
        ...

    async def close(self) -> None: ...
