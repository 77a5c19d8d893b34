"""Upload sessions' rows (a facet of the metadata store, mixed into it): create, read, save the
offset of every PATCH, takeover requests, and the lists that expiry and fsck walk."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Row, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from dockyard.metadata import schema as s
from dockyard.metadata import writes
from dockyard.metadata.faults import GuardedEngine
from dockyard.registry.ports import UploadSession

if TYPE_CHECKING:
    from dockyard.metadata.hotreads import SqliteHotReads

#: a session by id (also run on the SQLite hot-read connection)
UPLOAD = select(s.uploads).where(s.uploads.c.id == bindparam("id"))
#: the end of every PATCH (also run in place on SQLite: ``SqliteHotReads.try_write``)
SAVE_UPLOAD = (
    update(s.uploads)
    .where(s.uploads.c.id == bindparam("session_id"))
    .values(
        staged_bytes=bindparam("new_offset"),
        updated_at=bindparam("new_updated_at"),
        backend_state=bindparam("new_backend_state"),
    )
)


def _session(row: Row[Any] | sqlite3.Row) -> UploadSession:
    m: Any = row._mapping if isinstance(row, Row) else row
    return UploadSession(
        id=m["id"],
        repository=m["repository"],
        offset=m["staged_bytes"],
        algorithm=m["algorithm"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        owner=m["owner"],
        backend_state=json.loads(m["backend_state"]),
        takeover_requests=int(m["takeover_requests"] or 0),
    )


class UploadSessions:
    """The sessions' rows; the store provides the engines, the hot-read connection and the
    lock directory (a session's lock file goes with its row)."""

    _read: GuardedEngine
    _lock_dir: Path | None
    _hot: SqliteHotReads | None
    _begin: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    _transact: Callable[[Callable[[Connection], Any]], Awaitable[Any]]

    async def create_upload(self, session: UploadSession) -> None:
        await self._transact(functools.partial(writes.create_upload, session=session))

    async def get_upload(self, upload_id: str) -> UploadSession | None:
        if self._hot is not None:
            hot = self._hot.one("upload", {"id": upload_id})
            return _session(hot) if hot is not None else None
        async with self._read.connect() as conn:
            row = (await conn.execute(select(s.uploads).where(s.uploads.c.id == upload_id))).first()
        return _session(row) if row else None

    async def save_upload(self, session: UploadSession) -> None:
        params = {
            "session_id": session.id,
            "new_offset": session.offset,
            "new_updated_at": session.updated_at,
            "new_backend_state": json.dumps(session.backend_state),
        }
        # Every PATCH ends here: on SQLite, try the one-statement write in place (it fails at
        # once rather than wait when another writer holds the lock; then the async path waits).
        if self._hot is not None and self._hot.try_write("save_upload", params):
            return
        async with self._begin() as conn:
            await conn.execute(SAVE_UPLOAD, params)

    async def touch_upload(self, upload_id: str, at: float) -> None:
        async with self._begin() as conn:
            await conn.execute(update(s.uploads).where(s.uploads.c.id == upload_id).values(updated_at=at))

    async def request_takeover(self, upload_id: str) -> None:
        # A count, not a time: nodes' clocks need not agree for a holder to see a newer request.
        async with self._begin() as conn:
            await conn.execute(
                update(s.uploads)
                .where(s.uploads.c.id == upload_id)
                .values(takeover_requests=s.uploads.c.takeover_requests + 1)
            )

    async def takeover_requests(self, upload_id: str) -> int:
        q = select(s.uploads.c.takeover_requests).where(s.uploads.c.id == upload_id)
        async with self._read.connect() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    async def delete_upload(self, upload_id: str) -> None:
        await self._transact(functools.partial(writes.end_upload, upload_id=upload_id))
        if self._lock_dir is not None:  # its lock file goes with it (a holder keeps its inode)
            (self._lock_dir / upload_id).unlink(missing_ok=True)

    async def count_uploads(self, repository: str) -> int:
        q = select(func.count()).select_from(s.uploads).where(s.uploads.c.repository == repository)
        async with self._read.connect() as conn:
            return int((await conn.execute(q)).scalar() or 0)

    async def stale_uploads(self, updated_before: float) -> list[UploadSession]:
        q = select(s.uploads).where(s.uploads.c.updated_at < updated_before).limit(1000)
        async with self._read.connect() as conn:
            return [_session(row) for row in await conn.execute(q)]

    async def upload_ids(self) -> set[str]:
        async with self._read.connect() as conn:
            return set((await conn.execute(select(s.uploads.c.id))).scalars())

    async def upload_ids_of(self, repository: str) -> list[str]:
        async with self._read.connect() as conn:
            q = select(s.uploads.c.id).where(s.uploads.c.repository == repository)
            return list((await conn.execute(q)).scalars())
