"""``dockyard push``, ``pull``, ``copy`` and ``probe`` against dockyard, in each auth mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.support import PASSWORDS, start_auth_server, unique
from tests.client.support import build_big_image, cli, cli_json, file_digest
from tests.support.api_helpers import OCI_MANIFEST, digest_of, push_blob
from tests.support.oci_layout import build_index, layout_digests, resolve_tag
from tests.support.server import DockyardServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def auth_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DockyardServer]]:
    servers = {
        mode: start_auth_server(tmp_path_factory.mktemp(f"client-{mode}") / "data", mode)
        for mode in ("basic", "token")
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("mode", ["none", "basic", "token"])
def test_push_and_pull_an_index_in_each_auth_mode(
    mode: str, registry_server: DockyardServer, auth_servers: dict[str, DockyardServer], tmp_path: Path
) -> None:
    server = registry_server if mode == "none" else auth_servers[mode]
    env = {} if mode == "none" else {"DOCKYARD_USERNAME": "alice", "DOCKYARD_PASSWORD": PASSWORDS["alice"]}
    built = build_index(tmp_path / "layout", layer_size=300 * 1024)
    repo = unique("team")
    pushed = cli_json(
        "push", f"{tmp_path / 'layout'}:latest", f"{server.host}/{repo}:v1", "--chunk-size", "128KiB", env=env
    )
    assert pushed["digest"] == built.digest
    assert pushed["manifests"] == 3
    hows = {b["how"] for b in pushed["blobs"].values()}
    assert hows == {"chunked", "single-post"}, pushed  # 300 KiB layers in chunks, configs whole

    pulled = cli_json("pull", f"{server.host}/{repo}:v1", str(tmp_path / "out"), env=env)
    assert pulled["digest"] == built.digest
    assert layout_digests(tmp_path / "out") == layout_digests(tmp_path / "layout")
    assert resolve_tag(tmp_path / "out", "v1").digest == built.digest
    for digest in layout_digests(tmp_path / "out"):
        assert file_digest(tmp_path / "out" / "blobs" / "sha256" / digest[7:]) == digest

    if mode != "none":
        refused = cli("push", f"{tmp_path / 'layout'}:latest", f"{server.host}/{repo}:v2")
        assert refused.exit_code == 1 and "401" in refused.output, refused.output
        wrong = cli(
            "push",
            f"{tmp_path / 'layout'}:latest",
            f"{server.host}/{repo}:v2",
            env={"DOCKYARD_USERNAME": "alice", "DOCKYARD_PASSWORD": "not-it"},
        )
        assert wrong.exit_code == 1 and "401" in wrong.output, wrong.output
        denied = cli("push", f"{tmp_path / 'layout'}:latest", f"{server.host}/{unique('private')}:v1", env={
            "DOCKYARD_USERNAME": "bob", "DOCKYARD_PASSWORD": PASSWORDS["bob"]
        })  # fmt: skip
        assert denied.exit_code == 1 and ("401" in denied.output or "403" in denied.output), denied.output


def test_a_pushed_image_is_found_on_the_second_push_and_the_password_can_come_from_stdin(
    auth_servers: dict[str, DockyardServer], tmp_path: Path
) -> None:
    server = auth_servers["token"]
    image = build_big_image(tmp_path / "layout", 2 * MIB, extra_layers=2)
    dest = f"{server.host}/{unique('team')}:v1"
    args = ["push", str(tmp_path / "layout"), dest, "-u", "alice", "--password-stdin", "--json"]
    first = cli(*args, input=PASSWORDS["alice"] + "\n")
    assert first.exit_code == 0, first.output
    again = cli(*args, input=PASSWORDS["alice"] + "\n")
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["digest"] == image.manifest.digest
    assert {b["how"] for b in doc["blobs"].values()} == {"exists"}
    assert doc["bytes_sent"] == 0


def _attach_referrer(server: DockyardServer, repo: str, subject: str, size: int) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        empty = push_blob(client, repo, b"{}")
        descriptor = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.example.sbom",
                "config": descriptor,
                "layers": [descriptor],
                "subject": {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": subject,
                    "size": size,
                },
            }
        ).encode()
        digest = digest_of(body)
        r = client.put(f"/v2/{repo}/manifests/{digest}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
    return digest


def test_copy_mounts_within_a_registry_and_streams_across_with_platforms_and_referrers(
    registry_server: DockyardServer, start_server, proxy_to, tmp_path: Path
) -> None:
    built = build_index(tmp_path / "layout", layer_size=200 * 1024)
    src = unique("src")
    cli_json("push", f"{tmp_path / 'layout'}:latest", f"{registry_server.host}/{src}:v1")
    referrer = _attach_referrer(registry_server, src, built.digest, built.index.size)

    # within one registry: every blob mounted, nothing downloaded
    inside = unique("dst")
    copied = cli_json("copy", f"{registry_server.host}/{src}:v1", f"{registry_server.host}/{inside}:v2",
                      "--state", str(tmp_path / "state.json"))  # fmt: skip
    assert copied["digest"] == built.digest
    assert set(copied["blobs"]) == {"mounted"}, copied
    assert copied["referrers"] == [referrer]
    assert copied["bytes_sent"] == 0

    # to another registry, through a cut connection: streamed, chunk by chunk
    other = start_server()
    proxy = proxy_to(other)
    proxy.cut_upstream_at(300 * 1024)
    outside = unique("dst")
    state = str(tmp_path / "state.json")
    source = f"{registry_server.host}/{src}:v1"
    copied = cli_json("copy", source, f"{proxy.host}/{outside}:v1", "--chunk-size", "64KiB", "--state", state)
    assert proxy.pending() == []
    assert copied["faults_recovered"] >= 1
    assert copied["referrers"] == [referrer]
    with httpx.Client(base_url=other.url, timeout=30) as client:
        for image in built.images:
            r = client.head(f"/v2/{outside}/manifests/{image.digest}")
            assert r.status_code == 200
            for blob in image.blob_digests:
                assert client.head(f"/v2/{outside}/blobs/{blob}").status_code == 200
        assert client.get(f"/v2/{outside}/manifests/v1").headers["docker-content-digest"] == built.digest
        listed = client.get(f"/v2/{outside}/referrers/{built.digest}").json()
        assert [m["digest"] for m in listed["manifests"]] == [referrer]


def test_probe_reports_what_dockyard_does(registry_server: DockyardServer) -> None:
    doc = cli_json("probe", registry_server.host)
    results = doc["results"]
    assert results["location_stable"] is True
    assert results["old_locations_accepted"] is True
    assert results["range_416_status"] == 416
    assert results["range_416_location"] is True
    assert results["range_416_range"] is True
    assert results["range_416_uuid"] is True
    assert results["get_status"] == 204
    assert results["empty_session_range"] == "0--1"
    assert results["get_range"] is True
    assert results["streamed_patch"] is True
    assert results["patch_without_length"] is True
    assert results["single_post"] is True
    assert results["mount_from"] is True
    assert results["mount_without_from"] is True
    assert results["chunk_min_length"] == "none"  # the filesystem backend has none
    assert results["direct_uploads"] is False  # nor direct uploads
    assert results["lost_response"] == "chunk kept"
    assert results["cut_mid_body"].startswith("keeps ")
    assert results["commit"] is True
    assert results["referrers_api"] is True
    assert results["cleanup"] is True
    repository = doc["repository"]
    r = httpx.get(f"{registry_server.url}/v2/{repository}/tags/list")
    assert r.status_code == 404  # the scratch repository is gone

    table = cli("probe", registry_server.host)
    assert table.exit_code == 0
    assert "Location stable across PATCHes" in table.output and "yes" in table.output


def test_pull_with_a_platform_takes_that_image_of_the_index(
    registry_server: DockyardServer, tmp_path: Path
) -> None:
    built = build_index(
        tmp_path / "layout", platforms=(("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64"))
    )
    repo = unique("multi")
    cli_json("push", f"{tmp_path / 'layout'}:latest", f"{registry_server.host}/{repo}:v1")
    arm = built.image_for("linux", "arm64")

    pulled = cli_json(
        "pull", f"{registry_server.host}/{repo}:v1", str(tmp_path / "arm"), "--platform", "linux/arm64"
    )
    assert pulled["digest"] == arm.digest
    assert pulled["platform"] == "linux/arm64"
    # the layout names the arm64 image and holds exactly it: no index, no other platform's blobs
    assert resolve_tag(tmp_path / "arm", "v1").digest == arm.digest
    expected = {arm.digest, arm.config.digest, *(layer.digest for layer in arm.layers)}
    assert layout_digests(tmp_path / "arm") == expected

    missing = cli(
        "pull", f"{registry_server.host}/{repo}:v1", str(tmp_path / "none"), "--platform", "linux/s390x"
    )
    assert missing.exit_code == 1
    assert "linux/s390x" in missing.output and "linux/amd64, linux/arm64, windows/amd64" in missing.output
    bad = cli("pull", f"{registry_server.host}/{repo}:v1", str(tmp_path / "none"), "--platform", "linux")
    assert bad.exit_code == 2 and "os/architecture" in bad.output

    # an image that is not an index is pulled as it is
    single = cli_json(
        "pull",
        f"{registry_server.host}/{repo}@{arm.digest}",
        str(tmp_path / "one"),
        "--platform",
        "linux/amd64",
    )
    assert single["digest"] == arm.digest and single["platform"] is None


def test_pull_with_referrers_brings_the_artifacts_that_refer_to_the_image(
    registry_server: DockyardServer, tmp_path: Path
) -> None:
    built = build_index(tmp_path / "layout")
    repo = unique("signed")
    cli_json("push", f"{tmp_path / 'layout'}:latest", f"{registry_server.host}/{repo}:v1")
    sbom = _attach_referrer(registry_server, repo, built.digest, built.index.size)
    source = f"{registry_server.host}/{repo}:v1"

    plain = cli_json("pull", source, str(tmp_path / "plain"))
    assert plain["referrers"] == [] and sbom not in layout_digests(tmp_path / "plain")

    pulled = cli_json("pull", source, str(tmp_path / "out"), "--referrers")
    assert pulled["referrers"] == [sbom]
    assert sbom in layout_digests(tmp_path / "out")
    assert file_digest(tmp_path / "out" / "blobs" / "sha256" / sbom[7:]) == sbom
    entries = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert [e for e in entries if e["digest"] == sbom and "annotations" not in e]  # listed, unnamed
    assert resolve_tag(tmp_path / "out", "v1").digest == built.digest  # the tag still names the index


def test_ctrl_c_leaves_even_when_the_work_swallows_the_cancellation() -> None:
    """A request stalled in a write on a dead link once swallowed Ctrl-C's cancellation and the
    push went on retrying: after the grace period the command leaves anyway, 130, with the hint."""
    script = textwrap.dedent(
        """
        import asyncio
        from dockyard.client import commands
        commands.INTERRUPT_GRACE = 1.0

        async def stubborn() -> None:
            print("working", flush=True)
            while True:
                try:
                    await asyncio.sleep(100)
                except asyncio.CancelledError:
                    pass

        commands._run(stubborn(), "run the same command again")
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "working\n"
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "interrupted; run the same command again" in err
    assert time.monotonic() - started >= 1.0  # the grace came first
