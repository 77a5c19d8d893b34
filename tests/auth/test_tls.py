"""TLS (``--tls-cert``/``--tls-key``) and client certificates: as the identity in mtls mode,
and as an optional way to authenticate in basic mode when ``tls_client_ca`` is set."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.support import (
    PASSWORDS,
    BearerFlow,
    Pki,
    assert_challenge,
    assert_denied,
    dockyard_cli,
    parse_challenge,
    start_auth_server,
    unique,
)
from tests.support.api_helpers import OCI_MANIFEST, assert_error, push_image
from tests.support.server import DockyardServer


@pytest.fixture(scope="module")
def tls_basic_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[DockyardServer]:
    """Basic auth over TLS that also accepts client certificates of the test CA."""
    server = start_auth_server(
        tmp_path_factory.mktemp("tls-basic") / "data", "basic", pki=pki, client_ca=True
    )
    yield server
    server.stop()


def https(server: DockyardServer, pki: Pki, cert: str | None = None, **kwargs: object) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=pki.context(cert), timeout=30.0, **kwargs)  # type: ignore[arg-type]


def refused_or_challenged(attempt: httpx.Client, path: str = "/v2/") -> None:
    """The handshake fails, or HTTP answers 401: either way nothing is served."""
    try:
        response = attempt.get(path)
    except httpx.TransportError:
        return
    assert_error(response, 401, "UNAUTHORIZED")


def test_https_with_the_test_ca_serves_http_1_1(tls_basic_server: DockyardServer, pki: Pki) -> None:
    repo = unique("private")
    with https(tls_basic_server, pki, auth=("alice", PASSWORDS["alice"])) as alice:
        image = push_image(alice, repo, "v1", seed=repo)
        response = alice.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert (response.status_code, response.content) == (200, image.manifest)
    assert response.http_version == "HTTP/1.1"
    # The start line tells the operator what clients must dial.
    assert f"https://127.0.0.1:{tls_basic_server.port}/" in tls_basic_server.log(), tls_basic_server.log()


def test_plain_http_to_the_tls_port_gets_nothing(tls_basic_server: DockyardServer) -> None:
    plain = f"http://127.0.0.1:{tls_basic_server.port}/v2/"
    with pytest.raises(httpx.TransportError):
        httpx.get(plain, auth=("alice", PASSWORDS["alice"]), timeout=10.0)


def test_a_client_that_does_not_trust_the_test_ca_refuses_the_server(
    tls_basic_server: DockyardServer,
) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_basic_server.url}/v2/", verify=ssl.create_default_context(), timeout=10.0)


def test_the_server_certificate_is_checked_against_the_name_dialled(
    tls_basic_server: DockyardServer, pki: Pki
) -> None:
    """It names 127.0.0.1 (an IP SAN) and localhost, and nothing else."""
    with https(tls_basic_server, pki) as client:
        assert_challenge(client.get("/v2/"), "basic", None)
    wrong_name = pki.context()
    with (
        httpx.Client(verify=wrong_name, timeout=10.0) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(
            f"https://127.0.0.1:{tls_basic_server.port}/v2/", extensions={"sni_hostname": "registry.example"}
        )


def test_a_client_certificate_authenticates_in_basic_mode(tls_basic_server: DockyardServer, pki: Pki) -> None:
    repo = unique("private")
    with https(tls_basic_server, pki, "alice") as alice:
        image = push_image(alice, repo, "v1", seed=repo)
    with https(tls_basic_server, pki, "carol") as carol:
        assert carol.get(f"/v2/{repo}/manifests/v1").content == image.manifest
        assert_denied(carol.post(f"/v2/{repo}/blobs/uploads/"), "basic", repo, "push")
    with https(tls_basic_server, pki, "bob") as bob:
        assert_denied(bob.get(f"/v2/{repo}/manifests/v1"), "basic", repo, "pull")
    with https(tls_basic_server, pki) as nobody:
        assert_challenge(nobody.get(f"/v2/{repo}/manifests/v1"), "basic", None)


@pytest.mark.parametrize("cert", ["rogue", "expired"])
def test_a_certificate_that_does_not_verify_is_not_an_identity(
    tls_basic_server: DockyardServer, mtls_server: DockyardServer, pki: Pki, cert: str
) -> None:
    """Another CA's certificate for CN=alice, or the test CA's expired one, gets none of alice's
    rights, in either mode."""
    for server in (tls_basic_server, mtls_server):
        repo = unique("private")
        with https(server, pki, "alice") as alice:
            push_image(alice, repo, "v1", seed=repo)
        with https(server, pki, cert) as impostor:
            refused_or_challenged(impostor, f"/v2/{repo}/manifests/v1")


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: DockyardServer, pki: Pki) -> None:
    with https(mtls_server, pki) as anonymous:
        refused_or_challenged(anonymous)
        refused_or_challenged(anonymous, f"/v2/{unique('public')}/tags/list")


def test_mtls_identity_is_the_certificates_common_name(mtls_server: DockyardServer, pki: Pki) -> None:
    repo = unique("private")
    with https(mtls_server, pki, "alice") as alice:
        image = push_image(alice, repo, "v1", seed=repo)
        assert alice.delete(f"/v2/{repo}/manifests/v1").status_code == 202
        push_image(alice, repo, "v1", seed=repo)
    with https(mtls_server, pki, "bob") as bob:
        assert_denied(bob.get(f"/v2/{repo}/manifests/{image.digest}"), "mtls", repo, "pull")


def test_token_realm_is_https_behind_tls(tmp_path: Path, pki: Pki) -> None:
    server = start_auth_server(tmp_path / "data", "token", pki=pki)
    try:
        with https(server, pki) as anonymous:
            challenge = parse_challenge(anonymous.get("/v2/").headers["www-authenticate"])
        assert challenge.params["realm"] == f"https://127.0.0.1:{server.port}/auth/token"
        repo = unique("team")
        with https(server, pki, auth=BearerFlow("bob")) as bob:
            image = push_image(bob, repo, "v1", seed=repo)
            assert bob.get(f"/v2/{repo}/manifests/v1").content == image.manifest
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--tls-cert", "{cert}"], "", "tls_key"),
        (["--tls-key", "{key}"], "", "tls_cert"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}"], "auth:\n  mode: mtls\n", "tls_client_ca"),
        ([], "auth:\n  mode: mtls\ntls_client_ca: {ca}\n", "tls_cert"),
    ],
    ids=["cert-without-key", "key-without-cert", "mtls-without-client-ca", "mtls-without-cert"],
)
def test_incomplete_tls_settings_are_refused_at_start(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch, args: list[str], config: str, message: str
) -> None:
    def serve(settings: object) -> None:
        raise AssertionError(f"dockyard would serve with {settings}")

    monkeypatch.setattr("dockyard.http.server.serve", serve)
    paths = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca}
    config_file = tmp_path / "dockyard.yaml"
    config_file.write_text(config.format(**paths))
    result = dockyard_cli(
        "serve",
        "--listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"),
        "--config", str(config_file),
        *(a.format(**paths) for a in args),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr
