"""The facts port's one SQL implementation (SQLAlchemy Core, async): SQLite or PostgreSQL."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Row, delete, event, func, inspect, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dockyard.clock import wall_clock
from dockyard.metadata import probe, writes
from dockyard.metadata import schema as s
from dockyard.metadata.browsing import BrowsingQueries
from dockyard.metadata.faults import DISK_FULL, GuardedEngine
from dockyard.metadata.gcqueries import GcQueries
from dockyard.metadata.hotreads import (
    HOT_READS,
    LINKED_SIZE,
    MANIFEST,
    TAGGED_MANIFEST,
    SqliteHotReads,
)
from dockyard.metadata.locks import Locks
from dockyard.metadata.outbox import EventLog, Outbox
from dockyard.metadata.pglocks import MIGRATIONS_KEY, XACT_LOCK, AdvisoryLocks
from dockyard.metadata.sessions import UploadSessions
from dockyard.metadata.sqlitewriter import SqliteWriter
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.ports import (
    DependencyDown,
    ManifestRecord,
    ManifestRef,
    TagRecord,
)

if TYPE_CHECKING:
    from dockyard.metadata.pgcache import CachedReads  # asyncpg: only with PostgreSQL

MIGRATIONS = Path(__file__).parent / "migrations"


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision, read from the files: a schema already there is seen
    without importing Alembic (~10 MiB in every worker). None unless there is exactly one head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text()
        found = re.search(r"^revision\s*=\s*[\"'](\w+)[\"']", source, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*[\"'](\w+)[\"']", source, re.MULTILINE)
        if found:
            revisions.add(found.group(1))
        if down:
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_schema(connection: Connection) -> None:
    """Bring the schema to the newest revision (Alembic), inside the caller's transaction."""
    head = head_revision()
    if head is not None and _stored_revision(connection) == head:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def schema_revisions(connection: Connection) -> tuple[str | None, str | None]:
    """The schema's current revision in the database, and the newest this version knows."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(config).get_current_head()


def async_url(url: str) -> str:
    """A PostgreSQL URL without a driver gets the async one (asyncpg)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def _record(row: Row[Any] | sqlite3.Row) -> ManifestRecord:
    m: Any = row._mapping if isinstance(row, Row) else row
    return ManifestRecord(
        digest=Digest.trusted(m["digest"]),
        media_type=m["media_type"],
        size=m["size"],
        artifact_type=m["artifact_type"],
        subject=Digest.trusted(m["subject"]) if m["subject"] else None,
        annotations=json.loads(m["annotations"]) if m["annotations"] else None,
    )


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _changes_cached_facts(
    method: Callable[Concatenate[SqlMetadataStore, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SqlMetadataStore, _P], Coroutine[Any, Any, _T]]:
    """The method changes tags, manifests or blob links of the repository it is given (of any,
    when its first argument is not a repository name): this worker's cache forgets them then."""

    @functools.wraps(method)
    async def changing(self: SqlMetadataStore, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(self, *args, **kwargs)
        finally:
            repository = kwargs.get("repository", args[0] if args else None)
            self._changed(repository if isinstance(repository, str) else None)

    return changing  # type: ignore[return-value]  # functools.wraps keeps the signature


def _linked(row: Any) -> tuple[int, float]:
    return int(row[0]), float(row[1])


_PING = text("SELECT 1")


def _switch_to_wal(cursor: Any, patience: float = 60.0) -> None:
    """``PRAGMA journal_mode=WAL`` on a new database file. Connections opening it together (the
    workers or nodes of a first start) can get "database is locked" here at once: SQLite does
    not always call the busy handler for a journal-mode change. So the wait is ours."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SqlMetadataStore(BrowsingQueries, GcQueries, UploadSessions, Locks):
    """Metadata in SQL. SQLite runs write transactions as ``BEGIN IMMEDIATE`` (WAL mode), so
    concurrent workers queue for the write lock instead of failing on upgrade."""

    def __init__(
        self,
        url: str,
        migrate: bool = True,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        clock: Callable[[], float] | None = None,
        cache_ttl_seconds: float = 0.0,
    ) -> None:
        self.url = async_url(url)
        self._clock = clock or wall_clock()  # when rows were written: tags, links, repositories
        self._cache_ttl = cache_ttl_seconds  # PostgreSQL: the per-worker read cache (0: none)
        self._is_sqlite = self.url.startswith("sqlite")
        self._migrate = migrate
        self._connect_timeout = connect_timeout  # PostgreSQL: connecting, or waiting for the pool
        self._statement_timeout = statement_timeout  # PostgreSQL: one statement
        # Every query runs through these: a failing database is DependencyUnavailable (503).
        self._read: GuardedEngine
        self._write: GuardedEngine
        self._lock_dir: Path | None = None
        self._hot: SqliteHotReads | None = None
        self._writer: SqliteWriter | None = None  # SQLite: the request path's write transactions
        self._pg_locks: AdvisoryLocks | None = None  # cross-node locks on PostgreSQL
        self._pg_reads: CachedReads | None = None  # the pull hot path on PostgreSQL
        #: when set, every change writes its event in its own transaction (metadata/outbox.py)
        self.outbox: Outbox | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and migrate (or check) the schema; ``DependencyDown`` says why it cannot."""
        await self.connect()
        try:
            if self._migrate:
                await self.upgrade()
            else:
                current, head = await self.revisions()
                if current != head:
                    raise DependencyDown(
                        "database_auto_migrate",
                        f"the metadata schema is at revision {current}, this version needs {head}: "
                        "run `dockyard db upgrade`",
                    )
        except Exception as exc:
            await self.close()
            raise probe.classify(self.url, exc) from exc

    async def check(self) -> None:
        """The database answers a query now (readiness; cheap: a pooled connection)."""
        if not hasattr(self, "_read"):  # a start-up probe, before ``open``
            await self.connect()
        try:
            async with self._read.connect() as conn:
                await conn.execute(_PING)
        except Exception as exc:
            raise probe.classify(self.url, exc) from exc

    async def connect(self) -> None:
        """Set up the engines, touching nothing in the database (``open`` also migrates)."""
        if self._is_sqlite:
            path = Path(self.url.split(":///", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_dir = path.parent / "locks"
            self._lock_dir.mkdir(exist_ok=True)
            self._read = GuardedEngine(self._sqlite_engine(immediate=False))
            self._write = GuardedEngine(self._sqlite_engine(immediate=True))
            self._hot = SqliteHotReads(path)
            self._writer = SqliteWriter(path, lock_path=self._lock_dir / "sqlite-writer")
        else:
            # PostgreSQL: one engine; concurrency by transactions and row locks; session locks
            # (lock_upload, lock_blob, try_lock) are advisory locks on connections of their own.
            # Bounded waits: a database that is down or hung fails a request in seconds.
            engine = create_async_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=10,
                max_overflow=20,
                pool_recycle=1800,
                pool_timeout=self._statement_timeout,  # a pooled connection frees within a statement's time
                connect_args={"timeout": self._connect_timeout, "command_timeout": self._statement_timeout},
            )
            self._read = self._write = GuardedEngine(engine)
            self._pg_locks = AdvisoryLocks(self.url, connect_timeout=self._connect_timeout)
            from dockyard.metadata.pgcache import CachedReads

            self._pg_reads = CachedReads(self.url, self._cache_ttl, HOT_READS)
            self._pg_reads.start()

    async def upgrade(self) -> None:
        """Migrate the schema to the newest revision. On PostgreSQL under an advisory lock held
        for the transaction, so nodes starting together migrate once, one after the other.
        Without the statement timeout: a migration, or waiting for another node's, may take long."""
        if self._is_sqlite:
            async with self._begin() as conn:
                await conn.run_sync(upgrade_schema)
            return
        engine = GuardedEngine(
            create_async_engine(self.url, poolclass=NullPool, connect_args={"timeout": self._connect_timeout})
        )
        try:
            async with engine.begin() as conn:
                await conn.execute(XACT_LOCK, {"key": MIGRATIONS_KEY})
                await conn.run_sync(upgrade_schema)
        finally:
            await engine.dispose()

    async def revisions(self) -> tuple[str | None, str | None]:
        """(the database's schema revision, the newest revision this version knows)."""
        async with self._read.connect() as conn:
            return await conn.run_sync(schema_revisions)

    def _sqlite_engine(self, immediate: bool) -> AsyncEngine:
        engine = create_async_engine(self.url, connect_args={"timeout": 60})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")  # first: the WAL switch below may have to wait
            _switch_to_wal(cur)
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; a full disk is the registry's 507, not an internal error."""
        try:
            async with self._write.begin() as conn:
                yield conn
        except DBAPIError as exc:
            # SQLite says "database or disk is full"; PostgreSQL's disk_full is SQLSTATE 53100.
            sqlite_full = isinstance(exc, OperationalError) and "full" in str(exc.orig).lower()
            if sqlite_full or getattr(exc.orig, "sqlstate", None) == DISK_FULL:
                raise errors.RegistryError(errors.INSUFFICIENT_STORAGE) from exc
            raise

    async def _transact(self, work: Callable[[Connection], _T]) -> _T:
        """``work`` in one write transaction: on SQLite the writer thread's (grouped with other
        requests' under one commit), on PostgreSQL the async engine's (``run_sync``)."""
        if self._writer is not None:
            return await self._writer.run(work)
        async with self._begin() as conn:
            return await conn.run_sync(work)

    def _events_written(self) -> None:
        if self.outbox is not None:
            self.outbox.written()

    async def close(self) -> None:
        if self._hot is not None:
            self._hot.close()
        if self._writer is not None:
            self._writer.close()
        if self._pg_locks is not None:
            await self._pg_locks.close()
        if self._pg_reads is not None:
            await self._pg_reads.close()
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    def _changed(self, repository: str | None) -> None:
        """After a commit that changed tags, manifests or links (of every repository: None)."""
        if self._pg_reads is not None:
            self._pg_reads.changed(repository)

    def _insert(self, table: Any) -> Any:
        if self._is_sqlite:
            return sqlite.insert(table)
        from sqlalchemy.dialects import postgresql  # not imported by a SQLite server

        return postgresql.insert(table)

    # -- repositories and blobs ---------------------------------------------------------------------

    async def repository_exists(self, repository: str) -> bool:
        if self._hot is not None:
            return bool(self._hot.cached("repository", {"repository": repository}, lambda row: True))
        async with self._read.connect() as conn:
            row = await conn.execute(select(s.repositories.c.name).where(s.repositories.c.name == repository))
            return row.first() is not None

    async def list_repositories(self, limit: int, last: str | None) -> list[str]:
        q = select(s.repositories.c.name).order_by(s.repositories.c.name).limit(limit)
        if last:
            q = q.where(s.repositories.c.name > last)
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def linked_blob(self, repository: str, digest: Digest) -> tuple[int, float] | None:
        params = {"repository": repository, "digest": str(digest)}
        if self._hot is not None:
            found: tuple[int, float] | None = self._hot.cached(
                "size", params, lambda row: (int(row[0]), float(row[1]))
            )
            return found
        if self._pg_reads is not None:
            found = await self._pg_reads.cached("size", params, _linked)
            return found
        async with self._read.connect() as conn:
            row = (await conn.execute(LINKED_SIZE, params)).first()
        return None if row is None else _linked(row)

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        if self._pg_reads is not None:  # pushes and mounts decide on this: never from a cache
            row = await self._pg_reads.fetch("size", {"repository": repository, "digest": str(digest)})
            return None if row is None else int(row[0])
        found = await self.linked_blob(repository, digest)
        return None if found is None else found[0]

    async def blob_size(self, digest: Digest) -> int | None:
        q = (
            select(s.blobs.c.size)
            .join(s.repository_blobs, s.repository_blobs.c.digest == s.blobs.c.digest)
            .where(s.blobs.c.digest == str(digest))
            .limit(1)
        )
        async with self._read.connect() as conn:
            return (await conn.execute(q)).scalar()

    async def repositories_with_blob(self, digest: Digest, limit: int) -> list[str]:
        q = (
            select(s.repository_blobs.c.repository)
            .where(s.repository_blobs.c.digest == str(digest))
            .order_by(s.repository_blobs.c.repository)
            .limit(limit)
        )
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    @_changes_cached_facts
    async def link_blob(
        self,
        repository: str,
        digest: Digest,
        size: int,
        mounted_from: str | None = None,
        mounted: bool = False,
        ending_upload: str | None = None,
    ) -> None:
        outbox = self.outbox if mounted else None
        await self._transact(
            functools.partial(
                writes.link_blob,
                repository=repository,
                digest=str(digest),
                size=size,
                now=self._clock(),
                outbox=outbox,
                mounted_from=mounted_from,
                ending_upload=ending_upload,
            )
        )
        if outbox is not None:
            self._events_written()
        if ending_upload is not None and self._lock_dir is not None:
            (self._lock_dir / ending_upload).unlink(missing_ok=True)  # as delete_upload

    @_changes_cached_facts
    async def touch_link(self, repository: str, digest: Digest) -> None:
        link = s.repository_blobs
        statement = (
            update(link)
            .where(link.c.repository == repository, link.c.digest == str(digest))
            .values(created_at=self._clock())
        )
        await self._transact(lambda conn: conn.execute(statement))

    @_changes_cached_facts
    async def unlink_blob(self, repository: str, digest: Digest) -> bool:
        statement = delete(s.repository_blobs).where(
            s.repository_blobs.c.repository == repository,
            s.repository_blobs.c.digest == str(digest),
        )
        return await self._transact(lambda conn: bool(conn.execute(statement).rowcount))

    async def missing_blobs(self, repository: str, digests: Sequence[Digest]) -> list[Digest]:
        wanted = {str(d) for d in digests}
        if not wanted:
            return []
        if self._hot is not None:  # in the loop (and cached): the push's transaction re-checks
            return [d for d in digests if await self.linked_blob(repository, d) is None]
        q = select(s.repository_blobs.c.digest).where(
            s.repository_blobs.c.repository == repository, s.repository_blobs.c.digest.in_(wanted)
        )
        async with self._read.connect() as conn:
            found = set((await conn.execute(q)).scalars())
        return [d for d in digests if str(d) not in found]

    async def missing_manifests(self, repository: str, digests: Sequence[Digest]) -> list[Digest]:
        wanted = {str(d) for d in digests}
        if not wanted:
            return []
        if self._hot is not None:
            return [d for d in digests if await self.get_manifest(repository, d) is None]
        q = select(s.manifests.c.digest).where(
            s.manifests.c.repository == repository, s.manifests.c.digest.in_(wanted)
        )
        async with self._read.connect() as conn:
            found = set((await conn.execute(q)).scalars())
        return [d for d in digests if str(d) not in found]

    # -- manifests and tags -----------------------------------------------------------------------

    @_changes_cached_facts
    async def put_manifest(
        self,
        repository: str,
        record: ManifestRecord,
        refs: Sequence[ManifestRef],
        tags: Sequence[str],
    ) -> None:
        await self._transact(
            functools.partial(
                writes.put_manifest,
                repository=repository,
                record=record,
                refs=refs,
                tags=tags,
                now=self._clock(),
                outbox=self.outbox,
            )
        )
        self._events_written()

    async def get_manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        return await self._one_manifest(
            "manifest", MANIFEST, {"repository": repository, "digest": str(digest)}
        )

    async def _one_manifest(self, name: str, statement: Any, params: dict[str, str]) -> ManifestRecord | None:
        if self._hot is not None:
            record: ManifestRecord | None = self._hot.cached(name, params, _record)
            return record
        if self._pg_reads is not None:
            found: ManifestRecord | None = await self._pg_reads.cached(name, params, _record)
            return found
        async with self._read.connect() as conn:
            row = (await conn.execute(statement, params)).first()
        return _record(row) if row else None

    async def resolve_tag(self, repository: str, tag: str) -> ManifestRecord | None:
        return await self._one_manifest("tag", TAGGED_MANIFEST, {"repository": repository, "tag": tag})

    async def tag_updated_at(self, repository: str, tag: str) -> float | None:
        q = select(s.tags.c.updated_at).where(s.tags.c.repository == repository, s.tags.c.name == tag)
        async with self._read.connect() as conn:
            found = (await conn.execute(q)).scalar()
        return None if found is None else float(found)

    async def touch_tag(self, repository: str, tag: str, digest: Digest) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                update(s.tags)
                .where(
                    s.tags.c.repository == repository, s.tags.c.name == tag, s.tags.c.digest == str(digest)
                )
                .values(updated_at=self._clock())
            )
            return bool(result.rowcount)

    @_changes_cached_facts
    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        outbox = self.outbox

        def remove(conn: Connection) -> bool:
            result = conn.execute(
                delete(s.manifests).where(
                    s.manifests.c.repository == repository, s.manifests.c.digest == str(digest)
                )
            )
            if not result.rowcount:
                return False
            untagged = conn.execute(
                delete(s.tags)
                .where(s.tags.c.repository == repository, s.tags.c.digest == str(digest))
                .returning(s.tags.c.name)
            )
            tags = list(untagged.scalars())  # (read whole: a cursor left open may hold the statement)
            if outbox is not None:
                outbox.manifest_deleted(conn, repository, str(digest), tags)
            conn.execute(
                delete(s.manifest_refs).where(
                    s.manifest_refs.c.repository == repository, s.manifest_refs.c.manifest == str(digest)
                )
            )
            return True

        deleted = await self._transact(remove)
        if deleted:
            self._events_written()
        return deleted

    @_changes_cached_facts
    async def delete_tag(self, repository: str, tag: str) -> bool:
        deleted = await self._transact(
            functools.partial(writes.delete_tag, repository=repository, tag=tag, outbox=self.outbox)
        )
        if deleted:
            self._events_written()
        return deleted

    async def list_tags(self, repository: str, limit: int, last: str | None) -> list[str]:
        q = (
            select(s.tags.c.name)
            .where(s.tags.c.repository == repository)
            .order_by(s.tags.c.name)
            .limit(limit)
        )
        if last:
            q = q.where(s.tags.c.name > last)
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def tags_of_manifest(self, repository: str, digest: Digest, limit: int) -> list[str]:
        q = (
            select(s.tags.c.name)
            .where(s.tags.c.repository == repository, s.tags.c.digest == str(digest))
            .order_by(s.tags.c.name)
            .limit(limit)
        )
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def list_referrers(
        self, repository: str, subject: Digest, artifact_type: str | None
    ) -> list[ManifestRecord]:
        q = (
            select(s.manifests)
            .where(s.manifests.c.repository == repository, s.manifests.c.subject == str(subject))
            .order_by(s.manifests.c.created_at, s.manifests.c.digest)
        )
        if artifact_type is not None:
            q = q.where(s.manifests.c.artifact_type == artifact_type)
        async with self._read.connect() as conn:
            return [_record(row) for row in await conn.execute(q)]

    # -- whole-store views ----------------------------------------------------------------------------

    async def dangling_tags(self) -> list[TagRecord]:
        m = s.manifests
        q = select(s.tags).where(
            ~select(m.c.digest)
            .where(m.c.repository == s.tags.c.repository, m.c.digest == s.tags.c.digest)
            .exists()
        )
        async with self._read.connect() as conn:
            return [TagRecord(r.repository, r.name, Digest.parse(r.digest)) for r in await conn.execute(q)]

    async def unrecorded_links(self) -> list[tuple[str, Digest]]:
        link = s.repository_blobs
        q = select(link.c.repository, link.c.digest).where(
            ~select(s.blobs.c.digest).where(s.blobs.c.digest == link.c.digest).exists()
        )
        async with self._read.connect() as conn:
            return [(r.repository, Digest.parse(r.digest)) for r in await conn.execute(q)]

    @_changes_cached_facts
    async def forget_blob(self, digest: Digest) -> None:
        async with self._begin() as conn:
            # The record first: its row lock orders this after a concurrent link_blob, whose link
            # the second statement then sees (PostgreSQL, READ COMMITTED).
            await conn.execute(delete(s.blobs).where(s.blobs.c.digest == str(digest)))
            await conn.execute(delete(s.repository_blobs).where(s.repository_blobs.c.digest == str(digest)))

    # -- garbage collection: metadata/gcqueries.py; retention -----------------------------------------

    @_changes_cached_facts
    async def delete_tag_if(self, repository: str, tag: str, digest: Digest) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                delete(s.tags).where(
                    s.tags.c.repository == repository, s.tags.c.name == tag, s.tags.c.digest == str(digest)
                )
            )
            if result.rowcount and self.outbox is not None:
                await conn.run_sync(self.outbox.tag_deleted, repository, tag, str(digest), reason="retention")
                self.outbox.written()
            return bool(result.rowcount)

    async def list_tag_records(self, repository: str) -> list[tuple[str, Digest, float]]:
        q = select(s.tags.c.name, s.tags.c.digest, s.tags.c.updated_at).where(
            s.tags.c.repository == repository
        )
        async with self._read.connect() as conn:
            return [(name, Digest.parse(d), at) for name, d, at in await conn.execute(q)]

    @_changes_cached_facts
    async def delete_repository(self, repository: str) -> bool:
        async with self._begin() as conn:
            for table in (s.tags, s.manifest_refs, s.manifests, s.repository_blobs, s.uploads):
                await conn.execute(delete(table).where(table.c.repository == repository))
            result = await conn.execute(delete(s.repositories).where(s.repositories.c.name == repository))
            if result.rowcount and self.outbox is not None:
                await conn.run_sync(self.outbox.repository_deleted, repository)
                self.outbox.written()
            return bool(result.rowcount)

    async def record_login_failure(self, keys: list[str]) -> None:
        now = self._clock()
        f = s.login_failures
        async with self._begin() as conn:
            await conn.execute(f.insert(), [{"key": key, "at": now} for key in keys])
            await conn.execute(delete(f).where(f.c.at < now - 3600))

    async def login_retry_after(self, keys: list[str], limit: int, window: float) -> float | None:
        now = self._clock()
        f = s.login_failures
        q = (
            select(f.c.key, func.count(), func.min(f.c.at))
            .where(f.c.key.in_(keys), f.c.at > now - window)
            .group_by(f.c.key)
        )
        async with self._read.connect() as conn:
            waits = [first + window - now for _, count, first in await conn.execute(q) if count >= limit]
        return max(waits) if waits else None

    async def record_gc_run(self, run: dict[str, Any]) -> None:
        async with self._begin() as conn:
            await conn.execute(s.gc_runs.insert().values(**run))

    async def statistics(self) -> dict[str, float]:
        async with self._read.connect() as conn:
            stats: dict[str, float] = {}
            row = (await conn.execute(select(func.count(), func.coalesce(func.sum(s.blobs.c.size), 0)))).one()
            stats["blobs"], stats["blob_bytes"] = float(row[0]), float(row[1])
            row = (
                await conn.execute(select(func.count(), func.coalesce(func.sum(s.manifests.c.size), 0)))
            ).one()
            stats["manifests"], stats["manifest_bytes"] = float(row[0]), float(row[1])
            stats["repositories"] = float(
                (await conn.execute(select(func.count()).select_from(s.repositories))).scalar() or 0
            )
            stats["uploads"] = float(
                (await conn.execute(select(func.count()).select_from(s.uploads))).scalar() or 0
            )
            g = s.gc_runs
            row = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(g.c.bytes_freed), 0)).where(
                        g.c.dry_run.is_(False)
                    )
                )
            ).one()
            stats["gc_runs"], stats["gc_bytes_freed"] = float(row[0]), float(row[1])
            last = (
                await conn.execute(
                    select(g.c.started_at, g.c.duration)
                    .where(g.c.dry_run.is_(False))
                    .order_by(g.c.id.desc())
                    .limit(1)
                )
            ).first()
            if last is not None:
                stats["gc_last_started"], stats["gc_last_duration"] = float(last[0]), float(last[1])
            return stats

    async def record_pull(self, repository: str, record: ManifestRecord, reference: str) -> None:
        """A manifest.pulled event, when the outbox records pulls (its own transaction)."""
        if self.outbox is None or not self.outbox.manifest_pulls:
            return
        async with self._begin() as conn:
            await conn.run_sync(self.outbox.manifest_pulled, repository, record, reference)
        self.outbox.written()

    def event_log(self) -> EventLog:
        """The events' delivery queue (metadata/outbox.py), over this store's connections."""
        return EventLog(self._read.connect, self._begin, self._insert)
