"""Fixtures for the pull-through cache suite: an upstream ``dockyard serve`` and a proxy
``dockyard serve`` in front of it, both real processes on 127.0.0.1.

Images are pushed to the upstream over HTTP and pulled through the proxy; nothing of dockyard's
own is mocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import api_client
from tests.support.server import DockyardServer


def proxy_env(upstream: DockyardServer, tag_ttl: float = 60.0, **extra: str) -> dict[str, str]:
    """The environment of a proxy in front of ``upstream``."""
    return {
        "DOCKYARD_PROXY__REMOTE_URL": upstream.url,
        "DOCKYARD_PROXY__TAG_TTL_SECONDS": str(tag_ttl),
        "DOCKYARD_PROXY__TIMEOUT_SECONDS": "10",
        **extra,
    }


@pytest.fixture(scope="session")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, server_env: Callable[[], dict[str, str]]
) -> Iterator[DockyardServer]:
    """A plain dockyard the shared proxy serves from; tests push to repositories of their own."""
    server = DockyardServer(tmp_path_factory.mktemp("upstream") / "data", workers=1, env=server_env()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: DockyardServer,
    server_env: Callable[[], dict[str, str]],
) -> Iterator[DockyardServer]:
    """A pull-through cache of ``upstream`` with two workers (tags trusted for a minute)."""
    server = DockyardServer(
        tmp_path_factory.mktemp("proxy") / "data", workers=2, env={**server_env(), **proxy_env(upstream)}
    ).start()
    yield server
    server.stop()


@pytest.fixture
def up(upstream: DockyardServer) -> Iterator[httpx.Client]:
    with api_client(upstream.url) as c:
        yield c


@pytest.fixture
def through(proxy: DockyardServer) -> Iterator[httpx.Client]:
    """A client of the shared proxy; any 5xx answer fails the test."""
    with api_client(proxy.url) as c:
        yield c


@pytest.fixture
def start_proxy(start_server: Callable[..., DockyardServer]) -> Callable[..., DockyardServer]:
    """``start_proxy(upstream, tag_ttl=..., workers=..., env=...)``: a dedicated proxy."""

    def start(
        upstream: DockyardServer, tag_ttl: float = 60.0, workers: int = 1, **kwargs: object
    ) -> DockyardServer:
        env = {**proxy_env(upstream, tag_ttl), **(kwargs.pop("env", None) or {})}  # type: ignore[dict-item]
        return start_server(workers=workers, env=env, **kwargs)

    return start


def blob_file(data_dir: Path, digest: str) -> Path:
    """Where the filesystem store keeps a blob: ``blobs/<algorithm>/<xx>/<hex>``."""
    algorithm, _, hex_ = digest.partition(":")
    return data_dir / "blobs" / algorithm / hex_[:2] / hex_
