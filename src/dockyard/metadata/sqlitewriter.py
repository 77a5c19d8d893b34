"""SQLite's write path: one writer thread per process, whole transactions, group commit.

A request hands the writer a transaction, a function of a synchronous SQLAlchemy ``Connection``,
and awaits one future, where the async driver would hop threads for every statement. The writer
runs whatever transactions are queued back to back inside one ``BEGIN IMMEDIATE … COMMIT``,
each in a savepoint of its own, so a request that fails rolls back only its own work; the group
shares one WAL sync (``synchronous=FULL``: the commit is on disk before any future resolves, so a
``201`` still means durable). Workers of one machine queue for the write lock on an ``flock``
(a blocking wait on this thread, no polling); other writers (the CLI, a collector on the async
engine) meet the busy timeout, and a busy database is retried, then reported (503), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from dockyard.metadata.faults import database_faults
from dockyard.registry import errors

_T = TypeVar("_T")
MAX_GROUP = 64  # transactions per commit: bounds how long one group holds the write lock
BUSY_TIMEOUT_MS = 5000  # SQLite's own wait for the lock, per attempt
BUSY_PATIENCE = 60.0  # then retried until this many seconds have passed: 503 after that


@dataclass
class _Job:
    work: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # the awaiting request was cancelled
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        job.loop.call_soon_threadsafe(settle)


def _is_busy(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig).lower()


class SqliteWriter:
    """This process's writer thread and its connection (created after a fork, never inherited)."""

    def __init__(self, path: Path, lock_path: Path | None = None, synchronous: str = "FULL") -> None:
        self._path = path
        self._lock_path = lock_path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._guard = threading.Lock()
        #: how many transactions each commit carried (tests and profiles look at it)
        self.groups = 0
        self.transactions = 0

    async def run(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in a write transaction of its own (a savepoint of a group) and return its
        result once the group's commit is on disk; its exception, with its work rolled back."""
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Job(work, loop, future))
        with database_faults():  # locked past the patience, an I/O error: 503
            try:
                return await future
            except DBAPIError as exc:
                if full_disk(exc):
                    raise errors.RegistryError(errors.INSUFFICIENT_STORAGE) from exc
                raise

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._guard:
            if self._thread is None or self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._serve, name="dockyard-sqlite-writer", daemon=True
                )
                self._pid = os.getpid()
                self._thread.start()

    def close(self) -> None:
        """Stop the thread once the queued transactions ran (this process's only)."""
        if self._thread is not None and self._pid == os.getpid():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._thread = None

    # -- the writer thread ---------------------------------------------------------------------------

    def _engine(self) -> Engine:
        engine = create_engine(f"sqlite:///{self._path}", poolclass=StaticPool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # the writer issues BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute(f"PRAGMA synchronous={self._synchronous}")
            cur.close()

        return engine

    def _serve(self) -> None:
        engine = self._engine()
        conn: Connection | None = None
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644) if self._lock_path else None
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                group = [job]
                while len(group) < MAX_GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)  # stop after this group
                        break
                    group.append(more)
                if conn is None:
                    try:
                        conn = engine.connect()
                    except Exception as exc:
                        for j in group:
                            _settle(j, None, exc)
                        continue
                if lock_fd is not None:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    self._run_group(conn, group)
                finally:
                    if lock_fd is not None:
                        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            if conn is not None:
                conn.close()
            engine.dispose()
            if lock_fd is not None:
                os.close(lock_fd)

    def _begin(self, conn: Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting out another process's writer (busy) up to the patience."""
        deadline = time.monotonic() + BUSY_PATIENCE
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except DBAPIError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                conn.rollback()

    def _run_group(self, conn: Connection, group: list[_Job]) -> None:
        """The group in one transaction, a savepoint each. If the transaction itself fails (the
        begin, the commit, or a failure SQLite answers by rolling everything back), nothing of
        it is acknowledged: each member then runs once more alone, so only its own error counts."""
        try:
            self._begin(conn)
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            for job in group:
                _settle(job, None, exc)
            return
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        broken: BaseException | None = None
        for job in group:
            try:
                conn.exec_driver_sql("SAVEPOINT job")
            except Exception as exc:
                broken = exc
                break
            try:
                result = job.work(conn)
            except Exception as exc:
                try:
                    conn.exec_driver_sql("ROLLBACK TO job")
                    conn.exec_driver_sql("RELEASE job")
                except Exception:
                    broken = exc
                    break
                outcomes.append((job, None, exc))
                continue
            try:
                conn.exec_driver_sql("RELEASE job")
            except Exception as exc:
                broken = exc
                break
            outcomes.append((job, result, None))
        if broken is None:
            try:
                conn.commit()
            except Exception as exc:
                broken = exc
        if broken is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
            if len(group) == 1:
                _settle(group[0], None, broken)
                return
            for job in group:  # alone now: one member's failure is its own
                self._run_group(conn, [job])
            return
        self.groups += 1
        self.transactions += len(group)
        for job, result, error in outcomes:
            _settle(job, result, error)


def full_disk(exc: BaseException) -> bool:
    """SQLite's "database or disk is full"."""
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.OperationalError) and "full" in str(orig).lower()
