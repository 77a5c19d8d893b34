"""Is the database usable? Which of its failures at start are worth waiting out.

Final (the node refuses to start at once): the server rejects the login (SQLSTATE class 28),
the database does not exist (3D000), the role may not create the schema (42501), the schema is
at a revision this version does not know. Anything else — connection refused or reset, a
timeout, a name that does not resolve yet, a server starting up or shutting down (57P01-57P03),
too many connections (53300), a schema behind while ``database_auto_migrate`` is off (a
migration job may be on its way) — is waited for.
"""

from __future__ import annotations

import socket
import sys

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dockyard.registry.ports import DependencyDown

_FINAL_SQLSTATES = {"3D000": "the database does not exist", "42501": "permission denied"}


def describe(url: str) -> str:
    """Where the database is, for messages: never the password (nor the whole URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "the database"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite at {parsed.database}"
    host = parsed.host or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"PostgreSQL at {host}{port} (database {parsed.database})"


def _sqlstate(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        for candidate in (seen, getattr(seen, "orig", None)):
            state = getattr(candidate, "sqlstate", None)
            if isinstance(state, str) and state:
                return state
        seen = seen.__cause__ or seen.__context__
    return None


def classify(url: str, exc: BaseException) -> DependencyDown:
    """One line naming the setting to look at, and whether waiting can help."""
    where = describe(url)
    if isinstance(exc, DependencyDown):
        return exc
    # Alembic (imported only to migrate): a revision this version does not know.
    alembic_errors = sys.modules.get("alembic.util.exc")
    if alembic_errors is not None and isinstance(exc, alembic_errors.CommandError):
        return DependencyDown("database_url", f"{where}: schema unusable by this version: {exc}", final=True)
    state = _sqlstate(exc)
    if state is not None:
        if state.startswith("28"):
            return DependencyDown(
                "database_url", f"{where} rejected the login (SQLSTATE {state})", final=True
            )
        if state in _FINAL_SQLSTATES:
            return DependencyDown(
                "database_url", f"{where}: {_FINAL_SQLSTATES[state]} (SQLSTATE {state})", final=True
            )
        return DependencyDown("database_url", f"{where} is not accepting queries (SQLSTATE {state})")
    cause = _transport_cause(exc)
    if isinstance(cause, socket.gaierror):
        return DependencyDown("database_url", f"{where}: host name does not resolve ({cause.strerror})")
    if cause is not None:
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else type(cause).__name__
        return DependencyDown("database_url", f"{where} unreachable ({reason})")
    return DependencyDown("database_url", f"{where} failed: {type(exc).__name__}: {str(exc)[:200]}")


def _transport_cause(exc: BaseException) -> OSError | TimeoutError | None:
    """The connection's own failure, under whatever wraps it (the driver's, or ours)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError | TimeoutError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
