"""Fixtures for the client suite: fault-injecting proxies in front of dockyard, big layouts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.client.proxy import FaultProxy
from tests.client.support import BigImage, build_big_image
from tests.support.server import DockyardServer

GIB = 1024**3


@pytest.fixture
def proxy_to() -> Iterator[Callable[[DockyardServer], FaultProxy]]:
    """``proxy_to(server)``: a fault proxy in front of ``server``, stopped after the test."""
    proxies: list[FaultProxy] = []

    def make(server: DockyardServer) -> FaultProxy:
        proxies.append(FaultProxy(server.port).start())
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def gib_image(tmp_path_factory: pytest.TempPathFactory) -> BigImage:
    """An image with a 1 GiB layer of random bytes, written once per test session."""
    return build_big_image(tmp_path_factory.mktemp("gib") / "layout", GIB)


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    return tmp_path / "layout"
