"""The pull hot path on SQLite: its queries, run on a plain ``sqlite3`` connection in the event
loop thread, and a per-worker cache of their answers.

A primary-key read there takes microseconds, where the async driver's thread hop costs far more
than the query. WAL readers never wait for writers. The cache holds until any connection, in any
process, commits a change (SQLite's ``data_version``); PostgreSQL has its own (``pgcache.py``).
The same statements, defined once here, are what the async paths and PostgreSQL run.

Asking ``data_version`` takes a read transaction: two ``fcntl`` locks, 5 to 20 µs, on every pull
(a tenth of a manifest pull over HTTPS). Every commit rewrites the WAL index header, the first
bytes of the ``-shm`` file that all connections map (its change counter, frame count, salts and
checksum: https://sqlite.org/walformat.html), and a commit is acknowledged only after. So a pull
first compares those bytes, read from a mapping of our own, with what they were at the last
``data_version``: the same bytes, nothing was committed since. Different bytes (a commit, a
checkpoint restarting the WAL, or a header caught mid-write) send it to ``data_version`` as before;
so does a second gone by, whatever the bytes say (a ``-shm`` file replaced behind SQLite's back).

The mapping's descriptors are never closed: closing any descriptor of a file drops every POSIX
lock this process holds on it, SQLite's own included (its shared lock on ``-shm`` tells other
processes the index is in use). One mapping per ``-shm`` file per process, kept for its life.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.dialects import sqlite

from dockyard.metadata import schema as s
from dockyard.metadata.faults import database_fault, database_faults
from dockyard.metadata.sessions import SAVE_UPLOAD, UPLOAD
from dockyard.registry import errors

# The pull hot path's queries.
LINKED_SIZE = (
    select(s.blobs.c.size, s.repository_blobs.c.created_at)
    .join(s.repository_blobs, s.repository_blobs.c.digest == s.blobs.c.digest)
    .where(
        s.repository_blobs.c.repository == bindparam("repository"), s.blobs.c.digest == bindparam("digest")
    )
)
MANIFEST = select(s.manifests).where(
    s.manifests.c.repository == bindparam("repository"), s.manifests.c.digest == bindparam("digest")
)
TAGGED_MANIFEST = (
    select(s.manifests)
    .join(
        s.tags, and_(s.tags.c.repository == s.manifests.c.repository, s.tags.c.digest == s.manifests.c.digest)
    )
    .where(s.tags.c.repository == bindparam("repository"), s.tags.c.name == bindparam("tag"))
)
REPOSITORY = select(s.repositories.c.name).where(s.repositories.c.name == bindparam("repository"))
#: on PostgreSQL: name -> (cache key letter, the statement); the letters are migration 0007's
HOT_READS = {"size": ("b", LINKED_SIZE), "manifest": ("m", MANIFEST), "tag": ("t", TAGGED_MANIFEST)}

SQLITE_NAMED = sqlite.dialect(paramstyle="named")


def sqlite_sql(statement: Any) -> str:
    return str(statement.compile(dialect=SQLITE_NAMED))


_MISSING = object()
WAL_HEADER = 48  # bytes: the WAL index header's first copy (walformat.html, "WAL-Index Format")
WAL_INDEX_VERSION = 3007000  # its iVersion: the format this reading knows
RECHECK_SECONDS = 1.0  # data_version asked at least this often, whatever the header says
_MAPPINGS: dict[tuple[int, int, int], mmap.mmap] = {}  # (pid, device, inode) -> never closed


def _wal_index(database: Path) -> mmap.mmap | None:
    """A read-only mapping of ``database``'s WAL index (its ``-shm`` file), or None when there is
    none to read (not WAL, another format). Call with a connection of this process open on the
    database and past its first read: the index exists, and SQLite's shared lock on it keeps
    other processes from truncating it while that connection lives."""
    path = f"{database}-shm"
    try:
        found = os.stat(path)
        if found.st_size < mmap.PAGESIZE:
            return None
        key = (os.getpid(), found.st_dev, found.st_ino)
        mapping = _MAPPINGS.get(key)
        if mapping is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never closed: see the module's doc
            mapping = _MAPPINGS[key] = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError:
        return None
    if int.from_bytes(mapping[0:4], sys.byteorder) != WAL_INDEX_VERSION or mapping[12] != 1:
        return None  # another format, or not initialised: data_version every time
    return mapping


class SqliteHotReads:
    """Synchronous reads of the pull hot path on SQLite (WAL readers never wait for writers)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._sql = {
            name: sqlite_sql(q)
            for name, q in (
                ("size", LINKED_SIZE),
                ("manifest", MANIFEST),
                ("tag", TAGGED_MANIFEST),
                ("upload", UPLOAD),
                ("repository", REPOSITORY),
            )
        }
        self._version = -1
        self._wal_index: mmap.mmap | None = None  # this connection's, while it is open
        self._header = b""  # the WAL index header when data_version was last asked
        self._asked = 0.0  # and when (monotonic)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._writer: sqlite3.Connection | None = None
        self._writer_pid = -1
        self._write_sql = {"save_upload": sqlite_sql(SAVE_UPLOAD)}

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never share a connection across fork
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA query_only=1")
            self._conn.execute("PRAGMA data_version").fetchone()  # a read: the WAL index is open
            self._wal_index = _wal_index(self._path)
            self._header = b""
            self._pid = os.getpid()
        return self._conn

    def one(self, name: str, params: dict[str, str]) -> sqlite3.Row | None:
        with database_faults():
            row: sqlite3.Row | None = self._connection().execute(self._sql[name], params).fetchone()
        return row

    def try_write(self, name: str, params: dict[str, Any]) -> bool:
        """One write statement in its own transaction, only if the write lock is free now."""
        if self._writer is None or self._writer_pid != os.getpid():
            self._writer = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=0
            )
            # An upload's offset is as durable as its staged bytes, which are fsynced only at
            # the commit: no fsync here (a WAL commit's fsync drags the chunk just written to
            # disk with it, on ext4). A process crash loses nothing either way; after a power
            # loss the session reconciles its offset with the staged file.
            self._writer.execute("PRAGMA synchronous=NORMAL")
            self._writer_pid = os.getpid()
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy: let the caller wait off the event loop
            return False
        try:
            self._writer.execute(self._write_sql[name], params)
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
            if "full" in str(exc).lower():
                raise errors.RegistryError(errors.INSUFFICIENT_STORAGE) from exc
            return False  # anything else: the async path tries again and reports
        return True

    def cached(self, name: str, params: dict[str, str], convert: Callable[[sqlite3.Row], Any]) -> Any:
        """``convert(one(...))``, remembered until any connection commits a change: SQLite's
        ``data_version`` moves on every commit by another connection, in any process. A value
        stays the same object while it is remembered (callers may key their own caches on it)."""
        # Faults translated without a ``with database_faults()``: this runs on every pull.
        try:
            conn = self._connection()
            wal_index = self._wal_index
            header = wal_index[:WAL_HEADER] if wal_index is not None else b""
            now = time.monotonic()
            if not header or header != self._header or now - self._asked >= RECHECK_SECONDS:
                # Read before asking: a commit after this read changes the bytes seen next time.
                self._header = header
                self._asked = now
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._version:
                    self._cache.clear()
                    self._version = version
            key = (name, *params.values())
            found = self._cache.get(key, _MISSING)
            if found is not _MISSING:
                return found
            row = conn.execute(self._sql[name], params).fetchone()
        except Exception as exc:
            fault = database_fault(exc)
            if fault is exc:
                raise
            raise fault from exc
        value = convert(row) if row is not None else None
        if len(self._cache) < 50_000:
            self._cache[key] = value
        return value

    def close(self) -> None:
        self._wal_index = None  # only read while this connection holds the index open
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        if self._writer is not None and self._writer_pid == os.getpid():
            self._writer.close()
        self._conn = self._writer = None
