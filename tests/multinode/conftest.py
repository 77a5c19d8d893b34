"""Three ``dockyard serve`` nodes over one SeaweedFS bucket prefix and one PostgreSQL database.

The nodes run with the defaults a real deployment has: blob GETs redirect to pre-signed URLs of
the object store (clients follow them), HEAD answers on the node. One cluster serves the whole
module (tests use their own repositories); a test that kills a node starts it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.server import DockyardServer
from tests.support.services import SharedBackends


@pytest.fixture(scope="module")
def cluster(
    shared_backends: SharedBackends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[DockyardServer]]:
    env = shared_backends.server_env(redirect=True)
    root = tmp_path_factory.mktemp("cluster")
    nodes = [DockyardServer(root / f"node{i}", workers=1, env=env) for i in range(1, 4)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.start, nodes))
    yield nodes
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.stop, nodes))
