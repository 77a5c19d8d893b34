"""docker (the Debian ``docker.io`` engine) against dockyard: push, pull, multi-platform pulls.

docker has a registry client of its own (moby's ``distribution`` package): it pushes Docker
schema 2 manifests, compresses layers itself, streams each layer in one ``PATCH``, and pulls an
index's one platform. Images reach the daemon as ``docker load`` archives that skopeo writes
from the OCI layouts the tests build, so no image comes from a network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.clients import Skopeo, access_log_lines
from tests.interop.conftest import DockerCli
from tests.support.oci_layout import BuiltImage, build_image, build_index
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join(
    [
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def load_into_docker(skopeo_cli: Skopeo, docker_cli: DockerCli, layout: Path, tag: str, name: str) -> None:
    """``docker load`` the image ``layout:tag``, named ``name``, through a docker-archive file."""
    archive = layout.parent / f"{layout.name}-{tag}.tar"
    skopeo_cli.copy(f"oci:{layout}:{tag}", f"docker-archive:{archive}:{name}")
    out = docker_cli.run("load", "--input", str(archive)).stdout
    assert f"Loaded image: {name}" in out, out


def manifest_of(client: httpx.Client, repo: str, reference: str) -> tuple[str, str, dict[str, Any]]:
    """The manifest dockyard serves: its media type, digest and JSON (the digest checked)."""
    response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})
    assert response.status_code == 200, (reference, response.status_code, response.text[:300])
    digest = response.headers["docker-content-digest"]
    assert digest == "sha256:" + hashlib.sha256(response.content).hexdigest()
    return response.headers["content-type"], digest, response.json()


def assert_registry_holds_the_image(
    client: httpx.Client, repo: str, reference: str, image: BuiltImage
) -> tuple[str, str]:
    """What docker pushed to ``repo:reference`` is ``image``: the same layer contents (docker
    compresses them afresh) and the config whose digest is the image ID. Returns the manifest
    digest and the config digest."""
    media_type, digest, manifest = manifest_of(client, repo, reference)
    assert media_type == DOCKER_MANIFEST
    config_digest = manifest["config"]["digest"]
    config = client.get(f"/v2/{repo}/blobs/{config_digest}")
    assert config.status_code == 200
    assert "sha256:" + hashlib.sha256(config.content).hexdigest() == config_digest
    assert json.loads(config.content)["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert len(manifest["layers"]) == len(image.layers)
    for layer, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        blob = client.get(f"/v2/{repo}/blobs/{layer['digest']}")
        assert blob.status_code == 200 and len(blob.content) == layer["size"]
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob.content)).hexdigest() == diff_id
    return digest, config_digest


def test_push_remove_and_pull_back_keeps_the_image_and_its_digests(
    skopeo_cli: Skopeo,
    docker_cli: DockerCli,
    registry_server: DockyardServer,
    client: httpx.Client,
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    image = build_image(layouts / "src", layers=3, layer_size=256 * 1024, seed=seed, tag="v1")
    name = f"{registry_server.host}/{repo}:v1"
    load_into_docker(skopeo_cli, docker_cli, layouts / "src", "v1", name)

    pushed = docker_cli.push(name)
    digest, config_digest = assert_registry_holds_the_image(client, repo, "v1", image)
    assert digest == pushed
    assert docker_cli.inspect_image(name)["Id"] == config_digest

    docker_cli.run("rmi", name)
    assert docker_cli.run("image", "inspect", name, check=False).returncode != 0
    docker_cli.run("pull", name)
    pulled = docker_cli.inspect_image(name)
    assert pulled["Id"] == config_digest
    assert f"{registry_server.host}/{repo}@{digest}" in pulled["RepoDigests"]
    assert pulled["RootFS"]["Layers"] == list(image.diff_ids)

    docker_cli.run("rmi", name)
    docker_cli.run("pull", f"{registry_server.host}/{repo}@{digest}")
    assert docker_cli.inspect_image(f"{registry_server.host}/{repo}@{digest}")["Id"] == config_digest


def test_pull_of_one_platform_of_an_index(
    skopeo_cli: Skopeo,
    docker_cli: DockerCli,
    registry_server: DockyardServer,
    client: httpx.Client,
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    index = build_index(layouts / "src", seed=seed, tag="multi")
    name = f"{registry_server.host}/{repo}:multi"
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", f"docker://{name}", "--all")

    for os_name, architecture in (("linux", "arm64"), ("linux", "amd64")):
        docker_cli.run("pull", "--platform", f"{os_name}/{architecture}", name)
        pulled = docker_cli.inspect_image(name)
        child = index.image_for(os_name, architecture)
        assert (pulled["Os"], pulled["Architecture"]) == (os_name, architecture)
        assert pulled["Id"] == child.config.digest
        assert pulled["RootFS"]["Layers"] == list(child.diff_ids)
        assert f"{registry_server.host}/{repo}@{index.digest}" in pulled["RepoDigests"]
        docker_cli.run("rmi", name)


def test_manifest_inspect_shows_the_index_and_its_platforms(
    skopeo_cli: Skopeo, docker_cli: DockerCli, registry_server: DockyardServer, repo: str, layouts: Path
) -> None:
    index = build_index(layouts / "src", seed=7, tag="multi")
    name = f"{registry_server.host}/{repo}:multi"
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", f"docker://{name}", "--all")
    shown = json.loads(docker_cli.run("manifest", "inspect", "--insecure", name).stdout)
    platforms = {
        (entry["platform"]["os"], entry["platform"]["architecture"]): entry["digest"]
        for entry in shown["manifests"]
    }
    assert platforms == {image.platform: image.digest for image in index.images}


def test_a_large_layer_goes_up_in_one_patch(
    skopeo_cli: Skopeo,
    docker_cli: DockerCli,
    access_logged_server: DockyardServer,
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    server = access_logged_server
    image = build_image(layouts / "src", layers=1, layer_size=24 * 1024 * 1024, seed=seed, tag="big")
    name = f"{server.host}/{repo}:big"
    load_into_docker(skopeo_cli, docker_cli, layouts / "src", "big", name)
    docker_cli.push(name)

    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        assert_registry_holds_the_image(client, repo, "big", image)
    patches = [line.split('"')[1].split()[1] for line in access_log_lines(server, f"PATCH /v2/{repo}/")]
    commits = access_log_lines(server, f"PUT /v2/{repo}/blobs/uploads/")
    # Every session docker opened got its blob (the 24 MiB layer too) in one PATCH.
    assert patches and len(set(patches)) == len(patches), patches
    assert len(commits) == len(patches) and all('" 201 ' in line for line in commits), commits
