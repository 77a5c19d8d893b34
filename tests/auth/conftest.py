"""Fixtures for the access-control suite: one server per auth mode for the session, a test PKI,
and ``mode``, which runs a test once per mode with clients that authenticate the mode's way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.support import Pki, mode_client, start_auth_server
from tests.support.server import DockyardServer


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def _session_server(
    tmp_path_factory: pytest.TempPathFactory, mode: str, **kwargs: Any
) -> Iterator[DockyardServer]:
    server = start_auth_server(tmp_path_factory.mktemp(f"auth-{mode}") / "data", mode, **kwargs)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def basic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """Two workers: a change to the htpasswd file must reach both."""
    yield from _session_server(tmp_path_factory, "basic", workers=2)


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """Two workers: a token one worker signs must pass in the other."""
    yield from _session_server(tmp_path_factory, "token", workers=2)


@pytest.fixture(scope="session")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[DockyardServer]:
    yield from _session_server(tmp_path_factory, "mtls", pki=pki)


@dataclass(frozen=True)
class AuthMode:
    """A server in one auth mode and the way its clients authenticate."""

    name: str
    server: DockyardServer
    pki: Pki

    def client(self, user: str | None) -> httpx.Client:
        """``user`` (None: anonymous) with Basic credentials, the token flow or a certificate."""
        return mode_client(self.server, self.name, user, self.pki if self.name == "mtls" else None)

    def raw(self) -> httpx.Client:
        """No credentials at all and no token flow: the first answer a client gets."""
        verify: Any = self.pki.context() if self.name == "mtls" else True
        return httpx.Client(base_url=self.server.url, verify=verify, timeout=30.0)

    @property
    def has_anonymous(self) -> bool:
        """mtls refuses a client without a certificate before any HTTP is spoken."""
        return self.name != "mtls"


@pytest.fixture(params=["basic", "token", "mtls"])
def mode(request: pytest.FixtureRequest, pki: Pki) -> AuthMode:
    return AuthMode(request.param, request.getfixturevalue(f"{request.param}_server"), pki)


@pytest.fixture(params=["basic", "token"])
def password_mode(request: pytest.FixtureRequest, pki: Pki) -> AuthMode:
    """The modes where users log in with passwords and a client may come with no credentials."""
    return AuthMode(request.param, request.getfixturevalue(f"{request.param}_server"), pki)


@pytest.fixture(params=["none", "basic", "token", "mtls"])
def any_mode(request: pytest.FixtureRequest, pki: Pki) -> AuthMode:
    """The modes above and ``none`` (the shared server without access control) as a baseline."""
    server = request.getfixturevalue(
        "registry_server" if request.param == "none" else f"{request.param}_server"
    )
    return AuthMode(request.param, server, pki)


@pytest.fixture
def clients() -> Iterator[Callable[[AuthMode, str | None], httpx.Client]]:
    """``clients(mode, "bob")``: a client of the mode's server acting as bob, closed after the test."""
    made: list[httpx.Client] = []

    def make(mode: AuthMode, user: str | None) -> httpx.Client:
        made.append(mode.client(user))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def as_user(
    mode: AuthMode, clients: Callable[[AuthMode, str | None], httpx.Client]
) -> Callable[[str | None], httpx.Client]:
    """``as_user("bob")``: a client of the mode's server acting as bob."""
    return lambda user: clients(mode, user)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
