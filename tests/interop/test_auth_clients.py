"""Real clients against dockyard with access control, over TLS with a test CA.

skopeo and podman log in with ``--creds`` and trust the CA through ``--cert-dir`` with
``--tls-verify=true``; oras-py logs in (``login`` into a config file of the test's own) and
trusts the CA through ``tls_verify``. Each runs against basic auth and against token auth,
where it must find the token endpoint from the challenge and ask for the right scopes.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.auth.support import PASSWORDS, Pki, mode_client, start_auth_server
from tests.interop.clients import Skopeo, access_log_lines
from tests.interop.conftest import Podman
from tests.support.api_helpers import digest_of
from tests.support.oci_layout import BuiltImage, build_image, layout_digests, read_blob, resolve_tag
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass(frozen=True)
class Secured:
    """dockyard over TLS in one auth mode, and the test CA its clients trust."""

    mode: str
    server: DockyardServer
    pki: Pki

    def reference(self, repo: str, tag: str = "v1") -> str:
        return f"{self.server.host}/{repo}:{tag}"

    def admin(self) -> httpx.Client:
        return mode_client(self.server, self.mode, "root", self.pki)


@pytest.fixture(scope="module")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("interop-pki"))


@pytest.fixture(scope="module", params=["basic", "token"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, interop_pki: Pki
) -> Iterator[Secured]:
    mode = request.param
    server = start_auth_server(
        tmp_path_factory.mktemp(f"interop-{mode}") / "data",
        mode,
        pki=interop_pki,
        env={"DOCKYARD_ACCESS_LOG": "true"},
    )
    yield Secured(mode, server, interop_pki)
    server.stop()


@pytest.fixture
def team_repo(repo: str) -> str:
    """The test's repository under team/, where alice and bob (group devs) pull and push."""
    return f"team/{repo.rsplit('/', 1)[1]}"


def creds(user: str, password: str | None = None) -> str:
    return f"{user}:{password if password is not None else PASSWORDS[user]}"


def skopeo_push(
    skopeo_cli: Skopeo, secured: Secured, layout: Path, target: str, user: str, *flags: str
) -> None:
    skopeo_cli.run(
        "copy",
        "--dest-tls-verify=true",
        "--dest-cert-dir", str(secured.pki.cert_dir()),
        "--dest-creds", creds(user),
        *flags,
        f"oci:{layout}:v1",
        f"docker://{secured.reference(target)}",
    )  # fmt: skip


def served_manifest(secured: Secured, repo: str, reference: str = "v1") -> tuple[str, dict[str, Any]]:
    with secured.admin() as admin:
        response = admin.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES})
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == digest_of(response.content)
    return response.headers["docker-content-digest"], json.loads(response.content)


@pytest.fixture
def pushed(skopeo_cli: Skopeo, secured: Secured, team_repo: str, layouts: Path, seed: int) -> BuiltImage:
    """A two-layer image skopeo pushed, as alice, to ``team_repo:v1``."""
    image = build_image(layouts / "src", layers=2, layer_size=64 * 1024, seed=seed, tag="v1")
    skopeo_push(skopeo_cli, secured, layouts / "src", team_repo, "alice")
    return image


# -- skopeo -------------------------------------------------------------------------------------------------


def test_skopeo_copies_in_and_out_with_credentials_over_tls(
    skopeo_cli: Skopeo, secured: Secured, team_repo: str, layouts: Path, pushed: BuiltImage
) -> None:
    assert served_manifest(secured, team_repo)[0] == pushed.digest

    out = layouts / "out"
    skopeo_cli.run(
        "copy",
        "--src-tls-verify=true",
        "--src-cert-dir", str(secured.pki.cert_dir()),
        "--src-creds", creds("bob"),
        f"docker://{secured.reference(team_repo)}",
        f"oci:{out}:v1",
    )  # fmt: skip

    assert resolve_tag(out, "v1").digest == pushed.digest
    assert layout_digests(out) == layout_digests(layouts / "src")
    for digest in pushed.blob_digests:
        assert read_blob(out, digest) == read_blob(layouts / "src", digest)
    inspected = json.loads(
        skopeo_cli.run(
            "inspect", "--tls-verify=true", "--cert-dir", str(secured.pki.cert_dir()),
            "--creds", creds("bob"), f"docker://{secured.reference(team_repo)}",
        ).stdout
    )  # fmt: skip
    assert inspected["Digest"] == pushed.digest


def test_skopeo_copy_between_repositories_mounts_the_blobs(
    skopeo_cli: Skopeo, secured: Secured, team_repo: str, pushed: BuiltImage
) -> None:
    """containers/image asks to mount each blob from the source; with token auth it must ask
    for pull on the source repository in its token to be allowed."""
    target = f"{team_repo}-copy"
    cert_dir = str(secured.pki.cert_dir())
    skopeo_cli.run(
        "copy",
        "--src-tls-verify=true", "--src-cert-dir", cert_dir, "--src-creds", creds("alice"),
        "--dest-tls-verify=true", "--dest-cert-dir", cert_dir, "--dest-creds", creds("alice"),
        f"docker://{secured.reference(team_repo)}",
        f"docker://{secured.reference(target)}",
    )  # fmt: skip

    assert served_manifest(secured, target)[0] == pushed.digest
    posts = access_log_lines(
        secured.server, f"POST /v2/{target}/blobs/uploads/?", at_least=len(pushed.layers)
    )
    mounts = [line for line in posts if "mount=" in line and f"from={team_repo.replace('/', '%2F')}" in line]
    assert len(mounts) == len(pushed.layers) and all('" 201 ' in line for line in mounts), posts


def test_skopeo_with_wrong_or_insufficient_credentials_fails(
    skopeo_cli: Skopeo, secured: Secured, team_repo: str, layouts: Path, seed: int
) -> None:
    build_image(layouts / "src", layers=1, layer_size=16 * 1024, seed=seed, tag="v1")
    cert_dir = str(secured.pki.cert_dir())
    source = f"oci:{layouts / 'src'}:v1"
    destination = f"docker://{secured.reference(team_repo)}"

    for who in (creds("alice", "not-her-password"), creds("carol")):  # carol is no member of devs
        result = skopeo_cli.run(
            "copy", "--dest-tls-verify=true", "--dest-cert-dir", cert_dir, "--dest-creds", who,
            source, destination, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert any(word in result.stderr.lower() for word in ("unauthorized", "denied", "401", "403")), (
            result.stderr
        )

    # Without the CA, the registry's certificate is not trusted.
    untrusted = skopeo_cli.run(
        "copy", "--dest-tls-verify=true", "--dest-creds", creds("alice"), source, destination, check=False
    )
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr, untrusted.stderr

    with secured.admin() as admin:
        assert admin.get(f"/v2/{team_repo}/tags/list").status_code == 404  # nothing got in


# -- podman ------------------------------------------------------------------------------------------------


def podman_registry_flags(secured: Secured, user: str, password: str | None = None) -> list[str]:
    return ["--tls-verify=true", "--cert-dir", str(secured.pki.cert_dir()), "--creds", creds(user, password)]


def test_podman_pulls_and_pushes_with_credentials_over_tls(
    podman_cli: Podman, secured: Secured, team_repo: str, pushed: BuiltImage
) -> None:
    source = secured.reference(team_repo)
    pulled = podman_cli.run(
        "pull", *podman_cli.policy, *podman_registry_flags(secured, "bob"), "--quiet", source
    )
    assert pulled.stdout.strip() == pushed.config.digest.removeprefix("sha256:")

    target = f"{team_repo}-podman"
    digest_file = podman_cli.home / "pushed.digest"
    podman_cli.run(
        "push", *podman_cli.policy, *podman_registry_flags(secured, "bob"),
        "--digestfile", str(digest_file), source, f"docker://{secured.reference(target)}",
    )  # fmt: skip

    served, manifest = served_manifest(secured, target)
    assert served == digest_file.read_text().strip()
    assert manifest["config"]["digest"] == pushed.config.digest


def test_podman_with_wrong_credentials_fails(
    podman_cli: Podman, secured: Secured, team_repo: str, pushed: BuiltImage
) -> None:
    source = secured.reference(team_repo)
    for user, password in [("bob", "not-his-password"), ("carol", None)]:
        result = podman_cli.run(
            "pull", *podman_cli.policy, *podman_registry_flags(secured, user, password), source, check=False
        )
        assert result.returncode != 0, (user, result.stdout)
        assert any(word in result.stderr.lower() for word in ("unauthorized", "denied", "401", "403")), (
            result.stderr
        )


# -- oras-py -----------------------------------------------------------------------------------------------


def oras_login(
    oras: ModuleType,
    secured: Secured,
    config: Path,
    user: str,
    password: str | None = None,
    push_to: str | None = None,
) -> Any:
    """An oras-py client logged in as ``user`` (credentials saved to ``config``), trusting the test CA.

    oras-py's token backend keeps the one token its first challenge got and never asks for
    another: a push starts with a HEAD (a ``pull`` challenge), so its POST would carry a token
    without ``push``. Like helm does for quay.io, a client that will push to ``push_to`` gets a
    ``pull,push`` token up front, through oras-py's own token request.
    """
    client = oras.client.OrasClient(
        hostname=secured.server.host,
        tls_verify=str(secured.pki.ca),
        auth_backend="basic" if secured.mode == "basic" else "token",
    )
    answer = client.login(
        username=user,
        password=password if password is not None else PASSWORDS[user],
        hostname=secured.server.host,
        config_path=str(config),
    )
    assert answer == {"Status": "Login Succeeded"}
    if secured.mode == "token" and push_to is not None:
        probe = httpx.get(f"{secured.server.url}/v2/", verify=secured.pki.context())
        challenge = oras.auth.utils.parse_auth_header(probe.headers["www-authenticate"])
        challenge.scope = f"repository:{push_to}:pull,push"
        token = client.auth.request_token(challenge)
        if token:
            client.auth.set_token_auth(token)
    return client


@pytest.fixture
def oras_without_backoff(oras: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """oras-py retries a request whose authentication fails five times, sleeping 2 + 3**n seconds
    between tries (two minutes); a test of refused credentials need not wait for them."""
    decorator = importlib.import_module("oras.decorator")
    monkeypatch.setattr(decorator, "time", SimpleNamespace(sleep=lambda _seconds: None))
    return oras


def test_oras_pushes_and_pulls_an_artifact_with_credentials(
    oras: ModuleType, secured: Secured, team_repo: str, tmp_path: Path
) -> None:
    config = tmp_path / "oras-config.json"
    files = {"model.bin": bytes(range(256)) * 300, "readme.txt": b"pushed by oras-py with credentials\n"}
    (tmp_path / "in").mkdir()
    for name, content in files.items():
        (tmp_path / "in" / name).write_bytes(content)
    target = secured.reference(team_repo)

    alice = oras_login(oras, secured, config, "alice", push_to=team_repo)
    assert json.loads(config.read_text())["auths"][secured.server.host]["auth"]
    response = alice.push(
        target=target,
        files=[str(tmp_path / "in" / name) for name in files],
        config_path=str(config),
        disable_path_validation=True,
    )
    assert response.status_code == 201

    bob = oras_login(oras, secured, tmp_path / "bob-config.json", "bob")
    pulled = bob.pull(
        target=target, outdir=str(tmp_path / "out"), config_path=str(tmp_path / "bob-config.json")
    )
    assert {Path(p).name: Path(p).read_bytes() for p in pulled} == files
    assert served_manifest(secured, team_repo)[0] == response.headers["Docker-Content-Digest"]


def test_oras_with_wrong_credentials_cannot_push(
    oras_without_backoff: ModuleType, secured: Secured, team_repo: str, tmp_path: Path
) -> None:
    config = tmp_path / "oras-config.json"
    (tmp_path / "a.txt").write_bytes(b"a\n")
    for user, password in [("alice", "not-her-password"), ("carol", None)]:
        client = oras_login(oras_without_backoff, secured, config, user, password, push_to=team_repo)
        with pytest.raises(ValueError):
            client.push(
                target=secured.reference(team_repo),
                files=[str(tmp_path / "a.txt")],
                config_path=str(config),
                disable_path_validation=True,
            )
    with secured.admin() as admin:
        assert admin.get(f"/v2/{team_repo}/tags/list").status_code == 404
