"""Direct uploads over the real thing: three ``dockyard serve`` nodes on one SeaweedFS bucket
prefix and one PostgreSQL database, parts sent to the store by plain HTTP ``PUT``s.

One cluster serves the module (tests use their own repositories); ``node_with`` starts a node
of its own with extra settings on fresh backends, for the tests that change a limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.server import DockyardServer
from tests.support.services import SharedBackends


@pytest.fixture(scope="module")
def cluster_env(shared_backends: SharedBackends) -> dict[str, str]:
    return shared_backends.server_env(redirect=True)


@pytest.fixture(scope="module")
def cluster(
    cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[DockyardServer]]:
    root = tmp_path_factory.mktemp("direct-cluster")
    nodes = [DockyardServer(root / f"node{i}", workers=1, env=cluster_env) for i in range(1, 4)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.start, nodes))
    yield nodes
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.stop, nodes))


@pytest.fixture
def node_with(shared_backends: SharedBackends, tmp_path: Path) -> Iterator[Callable[..., DockyardServer]]:
    """``node_with(DOCKYARD_X="y")``: a node of its own (fresh prefix and database);
    ``node_with(beside=node, ...)``: another node over the same ones."""
    started: list[DockyardServer] = []
    backends: dict[int, dict[str, str]] = {}  # the backends each node runs on, by id(node)

    def start(beside: DockyardServer | None = None, **env: str) -> DockyardServer:
        """A node on fresh backends, or ``beside`` another on the same ones."""
        base = backends[id(beside)] if beside is not None else shared_backends.server_env()
        server = DockyardServer(tmp_path / f"node-{len(started)}", workers=1, env={**base, **env})
        backends[id(server)] = base
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()
