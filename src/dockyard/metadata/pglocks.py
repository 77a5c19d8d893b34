"""Locks across nodes on PostgreSQL: session-level advisory locks.

Each held lock owns one database connection for its life (from a pool of its own, so held locks
never starve the queries the holder still has to run). PostgreSQL releases a session's advisory
locks when its connection ends, so a node that is killed mid-PATCH never leaves a session locked:
its backend sees the socket close and goes, locks and all. TCP keepalives on these connections
cover a node that vanishes without closing its sockets. Locks are keyed by a 64-bit hash of
``namespace`` and name (collisions are as likely as guessing a 64-bit number).

Session-level advisory locks need a real PostgreSQL session: connect directly or through a
pooler in session mode (not PgBouncer's transaction mode).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from dockyard.metadata.faults import database_faults

log = logging.getLogger("dockyard.metadata")

_TRY = text("SELECT pg_try_advisory_lock(:key)")
_WAIT = text("SELECT pg_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
XACT_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_WAIT_MANY = text("SELECT count(pg_advisory_lock(k)) FROM unnest(CAST(:keys AS BIGINT[])) AS k")
_UNLOCK_MANY = text("SELECT count(pg_advisory_unlock(k)) FROM unnest(CAST(:keys AS BIGINT[])) AS k")


def lock_key(namespace: str, name: str) -> int:
    """The signed 64-bit advisory lock key of ``name`` in ``namespace``."""
    digest = hashlib.sha256(f"dockyard\0{namespace}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: held (per transaction) while migrations run, so nodes starting together do not race
MIGRATIONS_KEY = lock_key("schema", "migrations")


class AdvisoryLocks:
    """Advisory locks over their own connection pool."""

    def __init__(self, url: str, max_held: int = 200, connect_timeout: float = 5.0) -> None:
        self._engine = create_async_engine(
            url,
            pool_size=4,
            max_overflow=max_held,
            pool_pre_ping=True,
            pool_recycle=1800,
            pool_timeout=connect_timeout,
            connect_args={
                "timeout": connect_timeout,  # no statement timeout: waiting for a lock may take long
                "server_settings": {
                    "application_name": "dockyard-locks",
                    "tcp_keepalives_idle": "30",
                    "tcp_keepalives_interval": "10",
                    "tcp_keepalives_count": "3",
                },
            },
        )

    @asynccontextmanager
    async def hold(self, namespace: str, name: str, wait: bool) -> AsyncIterator[bool]:
        """Take the lock (waiting for it, or not); yields whether it is held."""
        key = lock_key(namespace, name)
        with database_faults():  # the database down: 503, like any query
            conn = await self._engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                result = await conn.execute(_WAIT if wait else _TRY, {"key": key})
                held = True if wait else bool(result.scalar())
            except BaseException:
                # Cancelled while waiting, or the connection failed: closing it drops whatever it held.
                await _discard(conn)
                raise
        try:
            yield held
        finally:
            if held:
                await _unlock_and_close(conn, _UNLOCK, {"key": key}, f"advisory lock {namespace}/{name}")
            else:
                with contextlib.suppress(Exception):
                    await conn.close()

    @asynccontextmanager
    async def hold_many(self, namespace: str, names: list[str]) -> AsyncIterator[None]:
        """Take the locks of all ``names`` (waiting for each), on one connection, in one statement."""
        keys = sorted({lock_key(namespace, name) for name in names})
        with database_faults():
            conn = await self._engine.connect()
            try:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(_WAIT_MANY, {"keys": keys})
            except BaseException:
                await _discard(conn)
                raise
        try:
            yield
        finally:
            await _unlock_and_close(conn, _UNLOCK_MANY, {"keys": keys}, f"{len(keys)} advisory locks")

    async def close(self) -> None:
        await self._engine.dispose()


async def _unlock_and_close(
    conn: AsyncConnection, unlock: TextClause, params: dict[str, Any], what: str
) -> None:
    """Release what ``conn`` holds and return it to the pool. If the release fails (the database
    restarted, say), the server dropped the locks with the connection, so the work done under
    them stands: only the connection goes."""
    try:
        await conn.execute(unlock, params)
    except Exception as exc:
        log.warning("releasing %s failed (%r); dropping its connection", what, exc)
        with contextlib.suppress(Exception):
            await _discard(conn)
        return
    except BaseException:
        await _discard(conn)
        raise
    with contextlib.suppress(Exception):
        await conn.close()


async def _discard(conn: AsyncConnection) -> None:
    """Close the connection for good instead of returning it (and any lock) to the pool."""
    try:
        await conn.invalidate()
    finally:
        await conn.close()
