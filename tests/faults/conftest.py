"""Fixtures of the fault tests: servers with fault points armed, and services to break.

Fault points (``DOCKYARD_FAILPOINTS_RAISE``, see ``dockyard.failpoints``) run on the filesystem
and on S3 (SeaweedFS) + PostgreSQL; the outage tests stop and start a real PostgreSQL and kill
and restart a real SeaweedFS of their own (the session's shared ones stay untouched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import DockyardServer
from tests.support.services import SharedBackends

Start = Callable[..., DockyardServer]


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def faulty(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Start]:
    """``faulty(points, backend="filesystem", env=None)``: a one-worker server whose named fault
    points fail (on ``s3``: over SeaweedFS and PostgreSQL, the node streaming blobs itself)."""
    servers: list[DockyardServer] = []

    def start(points: str, backend: str = "filesystem", env: dict[str, str] | None = None) -> DockyardServer:
        env = {**(env or {}), "DOCKYARD_FAILPOINTS_RAISE": points}
        if backend == "s3":
            shared: SharedBackends = request.getfixturevalue("shared_backends")
            env.update(shared.server_env(redirect=False))
        server = DockyardServer(tmp_path / f"data-{len(servers)}", workers=1, env=env)
        servers.append(server)
        return server.start(timeout=60)

    yield start
    for server in servers:
        server.stop()
