"""Shared fixtures: real ``dockyard serve`` processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import DockyardServer


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """One server (2 workers) shared by a whole test session; tests use their own repositories."""
    server = DockyardServer(tmp_path_factory.mktemp("dockyard") / "data", workers=2).start()
    yield server
    server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., DockyardServer]]:
    """Start a dedicated server: ``start_server(workers=1, env={...}, extra_args=[...])``."""
    servers: list[DockyardServer] = []

    def start(**kwargs: object) -> DockyardServer:
        data_dir = kwargs.pop("data_dir", None) or tmp_path / f"data-{len(servers)}"
        server = DockyardServer(data_dir=data_dir, **kwargs).start()  # type: ignore[arg-type]
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
