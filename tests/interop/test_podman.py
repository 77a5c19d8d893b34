"""podman against dockyard: pulls of images skopeo pushed, pushes to other repositories, --arch.

podman stores what it pulls uncompressed and compresses again on push, so a push from podman
need not reproduce the source manifest's bytes. What it must keep is the config (the image ID)
and the content of every layer (the config's diff_ids); those are what these tests compare.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.clients import Skopeo
from tests.interop.conftest import Podman
from tests.support.api_helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    api_client,
    digest_of,
)
from tests.support.oci_layout import BuiltImage, BuiltIndex, build_image, build_index, read_blob
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

MANIFEST_TYPES = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST))

# podman push --format, and the media types of the manifest, config and layers it then writes.
PUSH_FORMATS = {
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
    "v2s2": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
}


def hex_of(digest: str) -> str:
    return digest.removeprefix("sha256:")


def get_manifest(client: httpx.Client, repo: str, reference: str) -> tuple[str, dict[str, Any]]:
    """The digest dockyard serves for ``repo:reference`` (checked against the bytes) and the manifest."""
    response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES})
    assert response.status_code == 200, (response.status_code, response.text)
    digest = response.headers["docker-content-digest"]
    assert digest == digest_of(response.content)
    return digest, json.loads(response.content)


def get_blob(client: httpx.Client, repo: str, descriptor: dict[str, Any]) -> bytes:
    response = client.get(f"/v2/{repo}/blobs/{descriptor['digest']}", follow_redirects=True)
    assert response.status_code == 200, (descriptor, response.status_code)
    assert digest_of(response.content) == descriptor["digest"]
    assert len(response.content) == descriptor["size"]
    return response.content


@pytest.fixture
def pushed_image(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> BuiltImage:
    """A three-layer image copied by skopeo from an OCI layout to ``repo:v1``."""
    image = build_image(layouts / "src", layers=3, layer_size=128 * 1024, seed=seed, tag="v1")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:v1", f"docker://{registry_server.host}/{repo}:v1")
    return image


@pytest.fixture
def pushed_index(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> BuiltIndex:
    """A linux/amd64 + linux/arm64 image index copied by ``skopeo copy --all`` to ``repo:multi``."""
    index = build_index(layouts / "multi", seed=seed, tag="multi")
    skopeo_cli.copy(
        f"oci:{layouts / 'multi'}:multi", f"docker://{registry_server.host}/{repo}:multi", "--all"
    )
    return index


def test_pull_of_an_image_pushed_by_skopeo_keeps_its_digests(
    podman_cli: Podman, registry_server: DockyardServer, repo: str, pushed_image: BuiltImage, seed: int
) -> None:
    remote = f"{registry_server.host}/{repo}"

    assert podman_cli.pull(f"{remote}:v1") == hex_of(pushed_image.config.digest)

    info = podman_cli.inspect_image(f"{remote}:v1")
    assert info["Id"] == hex_of(pushed_image.config.digest)
    assert info["Digest"] == pushed_image.digest
    assert info["RepoDigests"] == [f"{remote}@{pushed_image.digest}"]
    assert info["RootFS"]["Layers"] == list(pushed_image.diff_ids)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Labels"] == {"dockyard.test.seed": str(seed)}
    # By digest, the same image again.
    assert podman_cli.pull(f"{remote}@{pushed_image.digest}") == info["Id"]


@pytest.mark.parametrize("push_format", sorted(PUSH_FORMATS))
def test_push_to_another_repository_keeps_config_and_layer_contents(
    new_podman: Callable[[], Podman],
    podman_cli: Podman,
    registry_server: DockyardServer,
    repo: str,
    layouts: Path,
    pushed_image: BuiltImage,
    push_format: str,
) -> None:
    manifest_type, config_type, layer_type = PUSH_FORMATS[push_format]
    source, target = f"{registry_server.host}/{repo}:v1", f"{repo}-copy"
    podman_cli.pull(source)

    pushed = podman_cli.push(source, f"docker://{registry_server.host}/{target}:v1", "--format", push_format)

    with api_client(registry_server.url) as client:
        served, manifest = get_manifest(client, target, "v1")
        assert served == pushed
        head = client.head(f"/v2/{target}/manifests/{pushed}", headers={"Accept": manifest_type})
        assert (head.status_code, head.headers["docker-content-digest"]) == (200, pushed)
        assert manifest["mediaType"] == manifest_type
        # The config travels byte for byte, whatever the manifest format.
        assert manifest["config"]["mediaType"] == config_type
        assert manifest["config"]["digest"] == pushed_image.config.digest
        assert get_blob(client, target, manifest["config"]) == read_blob(
            layouts / "src", pushed_image.config.digest
        )
        # Layers may be compressed again; uncompressed, they are the tars the config lists.
        assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type] * 3
        diff_ids = [
            digest_of(gzip.decompress(get_blob(client, target, layer))) for layer in manifest["layers"]
        ]
        assert diff_ids == list(pushed_image.diff_ids)

    # A podman with an empty storage pulls the copy as the same image.
    fresh = new_podman()
    assert fresh.pull(f"{registry_server.host}/{target}:v1") == hex_of(pushed_image.config.digest)
    assert fresh.inspect_image(f"{registry_server.host}/{target}:v1")["Digest"] == pushed


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_pull_arch_picks_the_matching_child_of_an_index(
    podman_cli: Podman, registry_server: DockyardServer, repo: str, pushed_index: BuiltIndex, arch: str
) -> None:
    remote = f"{registry_server.host}/{repo}"
    child = pushed_index.image_for("linux", arch)

    assert podman_cli.pull(f"{remote}:multi", "--arch", arch) == hex_of(child.config.digest)

    info = podman_cli.inspect_image(f"{remote}:multi")
    assert (info["Os"], info["Architecture"]) == ("linux", arch)
    assert info["RootFS"]["Layers"] == list(child.diff_ids)
    assert info["Digest"] == pushed_index.digest  # the digest the tag resolved to
    assert sorted(info["RepoDigests"]) == sorted(
        [f"{remote}@{pushed_index.digest}", f"{remote}@{child.digest}"]
    )
    # Only the chosen platform came down.
    images = json.loads(podman_cli.run("images", "--format", "json").stdout)
    assert [image["Id"] for image in images] == [hex_of(child.config.digest)]


def test_manifest_push_all_copies_an_index_to_another_repository(
    podman_cli: Podman, registry_server: DockyardServer, repo: str, pushed_index: BuiltIndex
) -> None:
    """podman writes an index of its own, but each platform's manifest is copied as is."""
    host, target = registry_server.host, f"{repo}-copy"
    podman_cli.run("manifest", "create", "localhost/interop/list:1")
    podman_cli.run(
        "manifest",
        "add",
        "--all",
        "--tls-verify=false",
        "localhost/interop/list:1",
        f"docker://{host}/{repo}:multi",
    )

    digest_file = podman_cli.home / "index.digest"
    # podman 4.3's manifest push has no --signature-policy: it reads /etc/containers/policy.json.
    podman_cli.run(
        "manifest", "push", "--all", "--format", "oci", "--tls-verify=false",
        "--digestfile", str(digest_file), "localhost/interop/list:1", f"docker://{host}/{target}:multi",
    )  # fmt: skip

    with api_client(registry_server.url) as client:
        served, index = get_manifest(client, target, "multi")
        assert served == digest_file.read_text().strip()
        assert index["mediaType"] == OCI_INDEX
        children = {(m["platform"]["os"], m["platform"]["architecture"]): m for m in index["manifests"]}
        assert sorted(children) == [("linux", "amd64"), ("linux", "arm64")]
        for image in pushed_index.images:
            child = children[image.platform]
            assert (child["digest"], child["size"]) == (image.digest, image.manifest.size)
            _, manifest = get_manifest(client, target, image.digest)
            for descriptor in (manifest["config"], *manifest["layers"]):
                get_blob(client, target, descriptor)
            assert [layer["digest"] for layer in manifest["layers"]] == [
                layer.digest for layer in image.layers
            ]
