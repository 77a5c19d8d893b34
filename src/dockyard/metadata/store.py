"""The facts port's one SQL implementation (SQLAlchemy Core, async): SQLite or PostgreSQL."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Row, and_, bindparam, delete, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from dockyard.metadata import schema as s
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.ports import ManifestRecord, ManifestRef, TagRecord, UploadSession

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade_schema(connection: Connection) -> None:
    """Bring the schema to the newest revision (Alembic), inside the caller's transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _record(row: Row[Any] | sqlite3.Row) -> ManifestRecord:
    m: Any = row._mapping if isinstance(row, Row) else row
    return ManifestRecord(
        digest=Digest.parse(m["digest"]),
        media_type=m["media_type"],
        size=m["size"],
        artifact_type=m["artifact_type"],
        subject=Digest.parse(m["subject"]) if m["subject"] else None,
        annotations=json.loads(m["annotations"]) if m["annotations"] else None,
    )


# The pull hot path's queries, defined once. On SQLite they also run on a plain sqlite3
# connection in the event loop thread: a primary-key read there takes microseconds, where the
# async driver's thread hop costs far more than the query.
_LINKED_SIZE = (
    select(s.blobs.c.size)
    .join(s.repository_blobs, s.repository_blobs.c.digest == s.blobs.c.digest)
    .where(
        s.repository_blobs.c.repository == bindparam("repository"), s.blobs.c.digest == bindparam("digest")
    )
)
_MANIFEST = select(s.manifests).where(
    s.manifests.c.repository == bindparam("repository"), s.manifests.c.digest == bindparam("digest")
)
_TAGGED_MANIFEST = (
    select(s.manifests)
    .join(
        s.tags, and_(s.tags.c.repository == s.manifests.c.repository, s.tags.c.digest == s.manifests.c.digest)
    )
    .where(s.tags.c.repository == bindparam("repository"), s.tags.c.name == bindparam("tag"))
)
_SQLITE_NAMED = sqlite.dialect(paramstyle="named")


def _sqlite_sql(statement: Any) -> str:
    return str(statement.compile(dialect=_SQLITE_NAMED))


class _SqliteHotReads:
    """Synchronous reads of the pull hot path on SQLite (WAL readers never wait for writers)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._sql = {
            name: _sqlite_sql(q)
            for name, q in (("size", _LINKED_SIZE), ("manifest", _MANIFEST), ("tag", _TAGGED_MANIFEST))
        }

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never share a connection across fork
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA query_only=1")
            self._pid = os.getpid()
        return self._conn

    def one(self, name: str, params: dict[str, str]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._connection().execute(self._sql[name], params).fetchone()
        return row

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


def _session(row: Row[Any]) -> UploadSession:
    return UploadSession(
        id=row.id,
        repository=row.repository,
        offset=row.staged_bytes,
        algorithm=row.algorithm,
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner=row.owner,
        backend_state=json.loads(row.backend_state),
    )


class SqlMetadataStore:
    """Metadata in SQL. SQLite runs write transactions as ``BEGIN IMMEDIATE`` (WAL mode), so
    concurrent workers queue for the write lock instead of failing on upgrade."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._is_sqlite = url.startswith("sqlite")
        self._read: AsyncEngine
        self._write: AsyncEngine
        self._lock_dir: Path | None = None
        self._hot: _SqliteHotReads | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._is_sqlite:
            path = Path(self.url.split(":///", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_dir = path.parent / "locks"
            self._lock_dir.mkdir(exist_ok=True)
            self._read = self._sqlite_engine(immediate=False)
            self._write = self._sqlite_engine(immediate=True)
            self._hot = _SqliteHotReads(path)
        else:
            self._read = self._write = create_async_engine(self.url, pool_pre_ping=True)
        async with self._begin() as conn:
            await conn.run_sync(upgrade_schema)

    def _sqlite_engine(self, immediate: bool) -> AsyncEngine:
        engine = create_async_engine(self.url, connect_args={"timeout": 60})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
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
        except OperationalError as exc:
            if "full" in str(exc.orig).lower():
                raise errors.RegistryError(errors.INSUFFICIENT_STORAGE) from exc
            raise

    async def close(self) -> None:
        if self._hot is not None:
            self._hot.close()
        await self._read.dispose()
        if self._write is not self._read:
            await self._write.dispose()

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self._is_sqlite else postgresql.insert)(table)

    async def _ensure_repository(self, conn: AsyncConnection, repository: str) -> None:
        await conn.execute(
            self._insert(s.repositories)
            .values(name=repository, created_at=time.time())
            .on_conflict_do_nothing()
        )

    # -- repositories and blobs ---------------------------------------------------------------------

    async def repository_exists(self, repository: str) -> bool:
        async with self._read.connect() as conn:
            row = await conn.execute(select(s.repositories.c.name).where(s.repositories.c.name == repository))
            return row.first() is not None

    async def list_repositories(self, limit: int, last: str | None) -> list[str]:
        q = select(s.repositories.c.name).order_by(s.repositories.c.name).limit(limit)
        if last:
            q = q.where(s.repositories.c.name > last)
        async with self._read.connect() as conn:
            return list((await conn.execute(q)).scalars())

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        params = {"repository": repository, "digest": str(digest)}
        if self._hot is not None:
            row = self._hot.one("size", params)
            return None if row is None else int(row[0])
        async with self._read.connect() as conn:
            return (await conn.execute(_LINKED_SIZE, params)).scalar()

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

    async def link_blob(self, repository: str, digest: Digest, size: int) -> None:
        now = time.time()
        async with self._begin() as conn:
            await self._ensure_repository(conn, repository)
            await conn.execute(
                self._insert(s.blobs)
                .values(digest=str(digest), size=size, created_at=now)
                .on_conflict_do_nothing()
            )
            await conn.execute(
                self._insert(s.repository_blobs)
                .values(repository=repository, digest=str(digest), created_at=now)
                .on_conflict_do_nothing()
            )

    async def unlink_blob(self, repository: str, digest: Digest) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                delete(s.repository_blobs).where(
                    s.repository_blobs.c.repository == repository,
                    s.repository_blobs.c.digest == str(digest),
                )
            )
            return bool(result.rowcount)

    async def missing_blobs(self, repository: str, digests: Sequence[Digest]) -> list[Digest]:
        wanted = {str(d) for d in digests}
        if not wanted:
            return []
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
        q = select(s.manifests.c.digest).where(
            s.manifests.c.repository == repository, s.manifests.c.digest.in_(wanted)
        )
        async with self._read.connect() as conn:
            found = set((await conn.execute(q)).scalars())
        return [d for d in digests if str(d) not in found]

    # -- manifests and tags -----------------------------------------------------------------------

    async def put_manifest(
        self,
        repository: str,
        record: ManifestRecord,
        refs: Sequence[ManifestRef],
        tags: Sequence[str],
    ) -> None:
        now = time.time()
        digest = str(record.digest)
        async with self._begin() as conn:
            await self._ensure_repository(conn, repository)
            await conn.execute(
                self._insert(s.manifests)
                .values(
                    repository=repository,
                    digest=digest,
                    media_type=record.media_type,
                    size=record.size,
                    artifact_type=record.artifact_type,
                    subject=str(record.subject) if record.subject else None,
                    annotations=json.dumps(record.annotations) if record.annotations else None,
                    created_at=now,
                )
                .on_conflict_do_nothing()
            )
            if refs:
                await conn.execute(
                    self._insert(s.manifest_refs).on_conflict_do_nothing(),
                    [
                        {
                            "repository": repository,
                            "manifest": digest,
                            "digest": str(r.digest),
                            "kind": r.kind,
                        }
                        for r in refs
                    ],
                )
            for tag in tags:
                stmt = self._insert(s.tags).values(
                    repository=repository, name=tag, digest=digest, updated_at=now
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[s.tags.c.repository, s.tags.c.name],
                        set_={"digest": digest, "updated_at": now},
                    )
                )

    async def get_manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        return await self._one_manifest(
            "manifest", _MANIFEST, {"repository": repository, "digest": str(digest)}
        )

    async def _one_manifest(self, name: str, statement: Any, params: dict[str, str]) -> ManifestRecord | None:
        if self._hot is not None:
            hot = self._hot.one(name, params)
            return _record(hot) if hot is not None else None
        async with self._read.connect() as conn:
            row = (await conn.execute(statement, params)).first()
        return _record(row) if row else None

    async def resolve_tag(self, repository: str, tag: str) -> ManifestRecord | None:
        return await self._one_manifest("tag", _TAGGED_MANIFEST, {"repository": repository, "tag": tag})

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                delete(s.manifests).where(
                    s.manifests.c.repository == repository, s.manifests.c.digest == str(digest)
                )
            )
            if not result.rowcount:
                return False
            await conn.execute(
                delete(s.tags).where(s.tags.c.repository == repository, s.tags.c.digest == str(digest))
            )
            await conn.execute(
                delete(s.manifest_refs).where(
                    s.manifest_refs.c.repository == repository, s.manifest_refs.c.manifest == str(digest)
                )
            )
            return True

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(
                delete(s.tags).where(s.tags.c.repository == repository, s.tags.c.name == tag)
            )
            return bool(result.rowcount)

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

    # -- upload sessions --------------------------------------------------------------------------

    async def create_upload(self, session: UploadSession) -> None:
        async with self._begin() as conn:
            await conn.execute(
                s.uploads.insert().values(
                    id=session.id,
                    repository=session.repository,
                    staged_bytes=session.offset,
                    algorithm=session.algorithm,
                    created_at=session.created_at,
                    updated_at=session.updated_at,
                    owner=session.owner,
                    backend_state=json.dumps(session.backend_state),
                )
            )

    async def get_upload(self, upload_id: str) -> UploadSession | None:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(s.uploads).where(s.uploads.c.id == upload_id))).first()
        return _session(row) if row else None

    async def save_upload(self, session: UploadSession) -> None:
        async with self._begin() as conn:
            await conn.execute(
                update(s.uploads)
                .where(s.uploads.c.id == session.id)
                .values(
                    staged_bytes=session.offset,
                    updated_at=session.updated_at,
                    backend_state=json.dumps(session.backend_state),
                )
            )

    async def delete_upload(self, upload_id: str) -> None:
        async with self._begin() as conn:
            await conn.execute(delete(s.uploads).where(s.uploads.c.id == upload_id))

    async def count_uploads(self, repository: str) -> int:
        q = select(func.count()).select_from(s.uploads).where(s.uploads.c.repository == repository)
        async with self._read.connect() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    async def stale_uploads(self, updated_before: float) -> list[UploadSession]:
        q = select(s.uploads).where(s.uploads.c.updated_at < updated_before).limit(1000)
        async with self._read.connect() as conn:
            return [_session(row) for row in await conn.execute(q)]

    # -- whole-store views ----------------------------------------------------------------------------

    async def iter_blobs(self) -> AsyncIterator[tuple[Digest, int]]:
        async with self._read.connect() as conn:
            result = await conn.stream(select(s.blobs.c.digest, s.blobs.c.size).order_by(s.blobs.c.digest))
            async for row in result:
                yield Digest.parse(row.digest), row.size

    async def manifest_digests(self) -> set[Digest]:
        async with self._read.connect() as conn:
            rows = await conn.execute(select(s.manifests.c.digest).distinct())
            return {Digest.parse(d) for d in rows.scalars()}

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

    async def upload_ids(self) -> set[str]:
        async with self._read.connect() as conn:
            return set((await conn.execute(select(s.uploads.c.id))).scalars())

    async def forget_blob(self, digest: Digest) -> None:
        async with self._begin() as conn:
            await conn.execute(delete(s.repository_blobs).where(s.repository_blobs.c.digest == str(digest)))
            await conn.execute(delete(s.blobs).where(s.blobs.c.digest == str(digest)))

    @asynccontextmanager
    async def lock_upload(self, upload_id: str) -> AsyncIterator[bool]:
        """One writer per session. On SQLite: an ``flock`` that the kernel drops with its process."""
        assert self._lock_dir is not None, "session locks on this engine come with PostgreSQL support"
        path = self._lock_dir / upload_id
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                if not path.exists() or not await self._upload_exists(upload_id):
                    path.unlink(missing_ok=True)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    async def _upload_exists(self, upload_id: str) -> bool:
        async with self._read.connect() as conn:
            row = (await conn.execute(select(s.uploads.c.id).where(s.uploads.c.id == upload_id))).first()
        return row is not None
