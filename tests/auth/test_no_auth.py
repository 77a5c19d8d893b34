"""The baseline: ``auth.mode: none`` (the default) lets anyone do anything, asks for nothing,
and says so loudly when it listens beyond loopback."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.auth.support import unique
from tests.support.api_helpers import OCI_MANIFEST, api_client, digest_of, push_image
from tests.support.server import DockyardServer


def test_without_access_control_anyone_pushes_pulls_deletes_and_lists(
    registry_server: DockyardServer,
) -> None:
    repo, other = unique("private"), unique("team")
    responses: list[httpx.Response] = []
    with api_client(registry_server.url) as client:
        client.event_hooks["response"].append(responses.append)
        image = push_image(client, repo, "v1", seed=repo)
        assert (
            client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == image.manifest
        )
        assert client.get("/v2/").status_code == 200
        assert repo in client.get("/v2/_catalog").json()["repositories"]
        mounted = client.post(
            f"/v2/{other}/blobs/uploads/", params={"mount": digest_of(image.config), "from": repo}
        )
        assert mounted.status_code == 201
        unnamed = client.post(f"/v2/{other}/blobs/uploads/", params={"mount": digest_of(image.layers[0])})
        assert unnamed.status_code == 201
        assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
        # Credentials of any kind are neither needed nor looked at.
        for header in ("Basic bm9ib2R5Om5vdGhpbmc=", "Basic !!!", "Bearer not-a-token"):
            assert client.get("/v2/", headers={"Authorization": header}).status_code == 200
    assert responses and not [r for r in responses if "www-authenticate" in r.headers]


def test_without_access_control_there_is_no_token_endpoint(registry_server: DockyardServer) -> None:
    response = httpx.get(f"{registry_server.url}/auth/token", params={"service": "dockyard"})
    assert response.status_code == 404


def _warnings(server: DockyardServer) -> list[str]:
    return [line for line in server.log().splitlines() if re.search(r"\bWARNING\b", line)]


def test_listening_beyond_loopback_without_auth_warns_at_start(
    registry_server: DockyardServer, tmp_path: Path
) -> None:
    assert _warnings(registry_server) == []  # on loopback: nothing to warn about

    # 0.0.0.0 for the second or two the test lasts; every request still goes to 127.0.0.1.
    exposed = DockyardServer(tmp_path / "exposed" / "data")
    exposed.extra_args = ["--listen", f"0.0.0.0:{exposed.port}"]
    exposed.start()
    exposed.stop()
    warnings = _warnings(exposed)
    assert any(re.search(r"auth|anyone|unauthenticated", line, re.IGNORECASE) for line in warnings), (
        exposed.log()
    )
