"""Fixtures for the lifecycle suite: a PostgreSQL of a test's own (to stop and start), and the
environment that points a node at the shared SeaweedFS bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import PostgresServer, postgres_bin_dir, unavailable


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for one test, not started yet: its port and URL are known, nothing
    listens there until the test calls ``start()`` (it may stop and start it again)."""
    if postgres_bin_dir() is None:
        unavailable("the PostgreSQL server is not installed (apt-get install postgresql)")
    server = PostgresServer()
    yield server
    server.stop()
