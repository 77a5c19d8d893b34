"""Fixtures for the interop suite: real clients (skopeo, oras-py) against a real dockyard.

A client that is missing skips its tests on a developer's machine and fails them in CI
(``CI=true``), so a CI machine that lost a client cannot go green by skipping.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from tests.interop.clients import Skopeo
from tests.support.server import DockyardServer

# How a fresh Debian machine gets each client (quoted in the skip or fail message).
INSTALL_HINTS = {
    "skopeo": "apt-get install -y skopeo",
    "oras": "pip install 'oras>=0.2.43'",
}


def missing_client(name: str, detail: str = "") -> NoReturn:
    """Skip locally, fail loudly in CI: the interop suite must not pass by running nothing."""
    reason = f"{name} is not available{detail}; install it with: {INSTALL_HINTS[name]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def skopeo() -> str:
    """Path of the ``skopeo`` binary."""
    path = shutil.which("skopeo")
    if path is None:
        missing_client("skopeo", " on PATH")
    return path


@pytest.fixture(scope="session")
def skopeo_cli(skopeo: str, tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """``skopeo`` with an empty credentials file of its own, so the user's logins play no part."""
    auth_file = tmp_path_factory.mktemp("skopeo") / "auth.json"
    auth_file.write_text('{"auths": {}}')
    return Skopeo(binary=skopeo, auth_file=auth_file)


@pytest.fixture(scope="session")
def oras() -> ModuleType:
    """The oras-py package, with ``oras.client.OrasClient`` and ``oras.oci`` loaded."""
    try:
        importlib.import_module("oras.client")
        importlib.import_module("oras.oci")
        return importlib.import_module("oras")
    except ImportError as exc:
        missing_client("oras", f" ({exc})")


@pytest.fixture(scope="session")
def oras_layout() -> ModuleType:
    """oras-py's OCI image layout support (``oras.layout.layout``), which 0.2.37 lacks and 0.2.43 has."""
    try:
        return importlib.import_module("oras.layout.layout")
    except ImportError as exc:
        missing_client("oras", f" with OCI layout support ({exc})")


@pytest.fixture
def access_logged_server(start_server: Callable[..., DockyardServer]) -> DockyardServer:
    """A dedicated server that logs every request, for tests that check which requests a client sent."""
    return start_server(workers=1, env={"DOCKYARD_ACCESS_LOG": "true", "DOCKYARD_LOG_LEVEL": "info"})


@pytest.fixture
def seed(repo: str) -> int:
    """A seed unique to the test's repository, so the images of different tests share no blob."""
    return int(repo.rsplit("/", 1)[-1], 16)


@pytest.fixture
def layouts(tmp_path: Path) -> Path:
    """A folder for the test's OCI layouts."""
    path = tmp_path / "layouts"
    path.mkdir()
    return path
