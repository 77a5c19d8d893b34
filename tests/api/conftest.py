"""API-suite fixtures: the shared server's client, guarded so that no request may get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.api_helpers import api_client
from tests.support.server import DockyardServer


@pytest.fixture
def client(registry_server: DockyardServer) -> Iterator[httpx.Client]:
    """Overrides the root ``client``: same server, but any 5xx answer fails the test."""
    with api_client(registry_server.url) as c:
        yield c
