"""The database failing, told apart from our own mistakes: the one place driver errors become
``DependencyUnavailable`` (503 + Retry-After) for the facts store.

A database that is unreachable, shutting down or starting up, a connection lost mid-statement,
a statement or connect timeout, a pool with no connection free, too many connections, and on
SQLite a lock not granted within the busy timeout or a disk I/O error: the request may work in a
moment, so the client is told to retry. Everything else (a constraint violated, bad SQL) is a
bug and stays what it is: a 500 with a traceback in the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dockyard.registry.errors import DependencyUnavailable, RegistryError

# SQLSTATE classes: 08 connection exception, 53 insufficient resources (too many connections,
# out of memory; a full disk, 53100, is the 507 of the write path), 57 operator intervention
# (admin_shutdown 57P01, crash_shutdown 57P02, cannot_connect_now 57P03, query_canceled 57014:
# the statement timeout), 58 system error (I/O error on the server).
_UNAVAILABLE_SQLSTATE_CLASSES = {"08", "53", "57", "58"}
DISK_FULL = "53100"
# asyncpg's errors for a connection that is gone (they carry no SQLSTATE).
_LOST_CONNECTION_NAMES = {"ConnectionDoesNotExistError", "ConnectionFailureError", "ConnectionRejectionError"}
_SQLITE_UNAVAILABLE = ("database is locked", "disk i/o error", "unable to open database file")
# asyncpg's words for a connection out of step with its server (it read the server's FATAL while
# idle and the end of the stream is still on its way): the connection is lost, not misused.
_OUT_OF_STEP = ("another operation", "not connected", "protocol is in", "in an unexpected state")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error SQLAlchemy wrapped (``orig``), and their causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, "orig", None), item.__cause__]


def is_database_fault(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot serve now (rather than that we asked wrong)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    for item in _chain(exc):
        if isinstance(item, (OSError, TimeoutError, sa_exc.TimeoutError)):
            return True  # refused, reset, unreachable; a timeout; no pooled connection free
        sqlstate = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if (
            isinstance(sqlstate, str)
            and sqlstate != DISK_FULL
            and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
        ):
            return True
        if type(item).__name__ in _LOST_CONNECTION_NAMES:
            return True
        if type(item).__name__ == "InternalClientError" and any(t in str(item) for t in _OUT_OF_STEP):
            return True
        if isinstance(item, sqlite3.OperationalError) and any(
            text in str(item).lower() for text in _SQLITE_UNAVAILABLE
        ):
            return True
        if "connection is closed" in str(item) or "connection was closed" in str(item):
            return True
    return False


def database_fault(exc: Exception) -> Exception:
    """What to raise (``from exc``) for ``exc``: ``DependencyUnavailable`` for a database that
    cannot serve, ``exc`` itself for anything else. ``database_faults`` is this as a ``with``
    block; the hot paths call it from an ``except`` (a ``with`` per lookup costs too much)."""
    if isinstance(exc, RegistryError) or not is_database_fault(exc):
        return exc
    return DependencyUnavailable("database", repr(exc))


@contextmanager
def database_faults() -> Iterator[None]:
    """Raise a database that cannot serve as ``DependencyUnavailable``; anything else as is."""
    try:
        yield
    except Exception as exc:
        fault = database_fault(exc)
        if fault is exc:
            raise
        raise fault from exc


class GuardedEngine:
    """An ``AsyncEngine`` whose connections and transactions report a failing database as
    ``DependencyUnavailable``: the store's queries run through here, so none of them needs its
    own handling. Only database work runs inside these blocks."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        with database_faults():
            async with self.engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        with database_faults():
            async with self.engine.begin() as conn:
                yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
