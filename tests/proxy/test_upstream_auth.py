"""A pull-through cache of an upstream that asks for credentials: Basic, and the Docker token
flow (a ``Bearer`` challenge, a token from the upstream's realm)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.auth.support import PASSWORDS, mode_client, start_auth_server, unique
from tests.support.api_helpers import api_client, assert_error, digest_of, push_blob, push_image
from tests.support.server import DockyardServer


@dataclass(frozen=True)
class AuthUpstream:
    mode: str  # "basic" or "token"
    server: DockyardServer


@pytest.fixture(params=["basic", "token"])
def auth_upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthUpstream]:
    """An upstream with access control (the users and rules of ``tests/auth/support.py``)."""
    server = start_auth_server(tmp_path / "upstream", request.param)
    yield AuthUpstream(request.param, server)
    server.stop()


def test_pulls_through_with_the_configured_credentials(
    auth_upstream: AuthUpstream, start_proxy: Callable[..., DockyardServer]
) -> None:
    repo = unique("private")
    with mode_client(auth_upstream.server, auth_upstream.mode, "alice") as up:
        image = push_image(up, repo, "v1", seed=auth_upstream.mode)
        big = os.urandom(1024 * 1024 + 3)
        big_digest = push_blob(up, repo, big)
    env = {"DOCKYARD_PROXY__USERNAME": "alice", "DOCKYARD_PROXY__PASSWORD": PASSWORDS["alice"]}
    proxy = start_proxy(auth_upstream.server, workers=1, env=env)
    with api_client(proxy.url) as through:
        r = through.get(f"/v2/{repo}/manifests/v1")
        assert r.status_code == 200 and r.content == image.manifest
        for data in (image.config, *image.layers, big):
            got = through.get(f"/v2/{repo}/blobs/{digest_of(data)}")
            assert got.status_code == 200 and got.content == data
        assert through.head(f"/v2/{repo}/blobs/{big_digest}").status_code == 200
        assert through.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]


def test_wrong_credentials_are_an_unavailable_upstream(
    auth_upstream: AuthUpstream, start_proxy: Callable[..., DockyardServer]
) -> None:
    repo = unique("private")
    with mode_client(auth_upstream.server, auth_upstream.mode, "alice") as up:
        push_image(up, repo, "v1", seed="wrong")
    env = {"DOCKYARD_PROXY__USERNAME": "alice", "DOCKYARD_PROXY__PASSWORD": "not-her-password"}
    proxy = start_proxy(auth_upstream.server, workers=1, env=env)
    with httpx.Client(base_url=proxy.url, timeout=30.0) as through:
        entry = assert_error(through.get(f"/v2/{repo}/manifests/v1"), 503, "MANIFEST_UNKNOWN")
        assert "401" in entry["message"] or "UNAUTHORIZED" in entry["message"]
