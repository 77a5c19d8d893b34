"""The pull hot path on PostgreSQL: per-worker caches kept correct across nodes, and one-statement reads.

Each worker remembers the answers a pull needs (tag -> manifest, manifest by digest, "this
repository links this blob") and forgets them when PostgreSQL says they changed: triggers
(migration 0007) send ``pg_notify`` from the transactions that change them, delivered on commit,
to one listening connection per worker. Two fallbacks bound what a missed notification can do:

- every entry expires ``ttl`` seconds after the read that filled it, so no answer is ever older
  than the TTL, whatever happens to the notifications;
- while the listening connection is down (PostgreSQL restarted, the backend was terminated, the
  health check got no answer) the cache is bypassed, and it starts empty once the connection is
  back, so nothing missed meanwhile survives.

A read that raced an invalidation is not remembered (a generation count per repository), so an
answer read before a change can never be cached after its notification was applied.

Misses run as one prepared statement on a small asyncpg pool of the worker's own: one round trip,
no ``BEGIN``/``ROLLBACK``, no ping on checkout (a connection that turns out dead is replaced and
the read tried once more).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.engine import make_url

from dockyard.metadata.faults import database_faults

log = logging.getLogger(__name__)

CHANNEL = "dockyard_cache"  # the triggers of migration 0007 notify here
MAX_ENTRIES = 50_000
#: connections a worker keeps for the hot reads: one event loop rarely has more in flight
POOL_SIZE = 4
#: what a dead or dying connection (or a stale prepared statement) raises: the read is then
#: tried once more on a new connection
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin_shutdown: PostgreSQL stopping
    asyncpg.exceptions.InvalidCachedStatementError,  # a migration changed what a statement returns
    # a connection out of step with its server: it read the server's FATAL (a shutdown, a
    # terminated backend) while idle, and the end of the stream has not arrived yet
    asyncpg.exceptions.InternalClientError,
)
_KEEPALIVES = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


def asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class _Statement:
    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=pg_asyncpg.dialect())  # type: ignore[no-untyped-call]
        self.sql = str(compiled)
        self.order = list(compiled.positiontup or ())

    def args(self, params: Mapping[str, str]) -> list[str]:
        return [params[name] for name in self.order]


class _Pool:
    """A few asyncpg connections, each preparing a statement the first time it runs it."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: list[tuple[asyncpg.Connection, dict[str, Any]]] = []
        self._free = asyncio.Semaphore(size)

    async def _connect(self) -> tuple[asyncpg.Connection, dict[str, Any]]:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=10,
            statement_cache_size=0,  # ours are prepared explicitly below
            server_settings={"application_name": "dockyard-reads", **_KEEPALIVES},
        )
        return conn, {}

    async def fetchrow(self, name: str, statement: _Statement, args: list[str]) -> Any:
        with database_faults():  # a database that cannot answer is a 503, as on the engine's path
            return await self._fetchrow(name, statement, args)

    async def _fetchrow(self, name: str, statement: _Statement, args: list[str]) -> Any:
        async with self._free:
            for attempt in (1, 2):
                while self._idle and self._idle[-1][0].is_closed():
                    self._idle.pop()  # the server ended it while it waited here
                conn, prepared = self._idle.pop() if self._idle else await self._connect()
                try:
                    ps = prepared.get(name)
                    if ps is None:
                        ps = prepared[name] = await conn.prepare(statement.sql)
                    row = await ps.fetchrow(*args)
                except CONNECTION_ERRORS:
                    conn.terminate()
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    conn.terminate()  # cancelled mid-query, or worse: never reuse it
                    raise
                self._idle.append((conn, prepared))
                return row
        raise AssertionError("unreachable")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


class ReadCache:
    """Answers by repository, each with its expiry; ``enabled`` only while notifications arrive."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.enabled = False
        self._clock = clock
        self._repos: dict[str, dict[tuple[str, str], tuple[Any, float]]] = {}
        self._size = 0
        self._epoch = 0  # moves on a full flush
        self._generations: dict[str, int] = {}  # moves on any change in the repository

    def ticket(self, repository: str) -> tuple[int, int]:
        """Taken before a read: the read's answer may be remembered only if it is still valid."""
        return self._epoch, self._generations.get(repository, 0)

    def get(self, repository: str, key: tuple[str, str]) -> tuple[bool, Any]:
        entries = self._repos.get(repository)
        if entries is None:
            return False, None
        found = entries.get(key)
        if found is None:
            return False, None
        if found[1] <= self._clock():
            del entries[key]
            self._size -= 1
            return False, None
        return True, found[0]

    def put(
        self, repository: str, key: tuple[str, str], value: Any, ticket: tuple[int, int], read_at: float
    ) -> None:
        if not self.enabled or ticket != self.ticket(repository):
            return  # a change (or a flush) came in while the read ran
        if self._size >= MAX_ENTRIES:
            self._sweep()
        entries = self._repos.setdefault(repository, {})
        if key not in entries:
            self._size += 1
        entries[key] = (value, read_at + self.ttl)

    def _sweep(self) -> None:
        now = self._clock()
        for repository, entries in list(self._repos.items()):
            for key in [k for k, (_, expires) in entries.items() if expires <= now]:
                del entries[key]
                self._size -= 1
            if not entries:
                del self._repos[repository]
        if self._size >= MAX_ENTRIES:
            self.flush()

    def flush(self) -> None:
        self._repos.clear()
        self._generations.clear()
        self._size = 0
        self._epoch += 1

    def forget_repository(self, repository: str) -> None:
        self._generations[repository] = self._generations.get(repository, 0) + 1
        entries = self._repos.pop(repository, None)
        if entries:
            self._size -= len(entries)

    def apply(self, payload: str) -> None:
        """One notification: ``t|m|b <repository> <name>``, ``r <repository>`` or ``*``."""
        kind, _, rest = payload.partition(" ")
        repository, _, name = rest.partition(" ")
        if kind == "*" or not repository:
            self.flush()
            return
        if kind == "r" or not name:
            self.forget_repository(repository)
            return
        self._generations[repository] = self._generations.get(repository, 0) + 1
        entries = self._repos.get(repository)
        if not entries:
            return
        doomed = [(kind, name)]
        if kind == "m":  # tags resolve through the manifest row: forget the repository's tags too
            doomed += [key for key in entries if key[0] == "t"]
        for key in doomed:
            if entries.pop(key, None) is not None:
                self._size -= 1


def _set_on_termination(event: asyncio.Event, _conn: Any) -> None:
    event.set()


class CachedReads:
    """The hot reads of one worker: cache first, then one prepared statement."""

    def __init__(self, url: str, ttl: float, statements: Mapping[str, tuple[str, Any]]) -> None:
        """``statements``: name -> (the cache key's letter, a SQLAlchemy select taking
        ``repository`` and one more parameter, the name within the repository)."""
        self._dsn = asyncpg_dsn(url)
        self.cache = ReadCache(ttl)
        self._statements = {name: (letter, _Statement(q)) for name, (letter, q) in statements.items()}
        self._pool: _Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self.notifications = 0  # applied so far (for tests and curiosity)
        self.reconnects = 0

    def start(self) -> None:
        """Start listening (in the worker's event loop): the cache is on once the LISTEN is."""
        if self._listener is None and self.cache.ttl > 0:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def _start(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self._dsn, POOL_SIZE)
            self.start()
        return self._pool

    async def fetch(self, name: str, params: Mapping[str, str]) -> Any:
        """The row, straight from the database."""
        _, statement = self._statements[name]
        return await self._start().fetchrow(name, statement, statement.args(params))

    async def cached(self, name: str, params: Mapping[str, str], convert: Callable[[Any], Any]) -> Any:
        """``convert(row)`` (None without a row), from the cache while it is trustworthy."""
        pool = self._start()
        letter, statement = self._statements[name]
        repository = params["repository"]
        key = (letter, next(v for k, v in params.items() if k != "repository"))
        cache = self.cache
        if cache.enabled:
            hit, value = cache.get(repository, key)
            if hit:
                return value
        ticket, read_at = cache.ticket(repository), time.monotonic()
        row = await pool.fetchrow(name, statement, statement.args(params))
        value = convert(row) if row is not None else None
        cache.put(repository, key, value, ticket, read_at)
        return value

    def changed(self, repository: str | None) -> None:
        """This worker committed a change: forget at once what it may have touched (the
        notification reaches the other workers and nodes, and this one again, on its way)."""
        if repository is None:
            self.cache.flush()
        else:
            self.cache.forget_repository(repository)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        self.cache.apply(payload)

    async def _listen(self) -> None:
        """Keep one connection LISTENing; the cache is on only while it is known to be alive."""
        check_every = max(0.2, min(self.cache.ttl / 2, 5.0))
        delay = 0.05
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=10,
                    # the worker's pid in the name: an operator (or a test) can find its listener
                    server_settings={"application_name": f"dockyard-cache {os.getpid()}", **_KEEPALIVES},
                )
                conn.add_termination_listener(functools.partial(_set_on_termination, lost))
                await conn.add_listener(CHANNEL, self._on_notification)
                # Listening now: whatever changed before is flushed, whatever changes next is heard.
                self.cache.flush()
                self.cache.enabled = True
                delay = 0.05
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), check_every)
                    if lost.is_set():
                        break
                    await conn.fetchval("SELECT 1", timeout=check_every)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("cache notifications: %s", exc)
            finally:
                self.cache.enabled = False
                self.cache.flush()
                if conn is not None:
                    conn.terminate()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
