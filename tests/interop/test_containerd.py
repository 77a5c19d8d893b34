"""containerd's ``ctr`` against dockyard: multi-platform pulls, pushes, imports, all by digest.

containerd has its own registry client (``remotes/docker``), unrelated to containers/image: it
resolves tags with HEAD, fetches by digest, pushes the blobs it lacks and mounts across
repositories the ones it knows the source of. ctr pushes content as it holds it, so every
digest must come back unchanged.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.interop.clients import Skopeo, access_log_lines
from tests.interop.conftest import Ctr
from tests.support.oci_layout import (
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltIndex,
    build_index,
    layout_digests,
    read_blob,
    resolve_tag,
)
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop


def head_manifest(client: httpx.Client, repo: str, reference: str, media_type: str) -> str:
    response = client.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
    assert response.status_code == 200, (repo, reference, response.status_code)
    assert response.headers["content-type"] == media_type
    digest: str = response.headers["docker-content-digest"]
    return digest


def assert_repository_holds(client: httpx.Client, repo: str, index: BuiltIndex) -> None:
    """``repo`` answers for the index, every child manifest and every blob, each by its digest."""
    assert head_manifest(client, repo, index.digest, OCI_INDEX) == index.digest
    for image in index.images:
        assert head_manifest(client, repo, image.digest, OCI_MANIFEST) == image.digest
        for digest in image.blob_digests:
            response = client.head(f"/v2/{repo}/blobs/{digest}")
            assert response.status_code == 200, (repo, digest, response.status_code)
            assert response.headers["docker-content-digest"] == digest


@pytest.fixture
def pushed_index(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> BuiltIndex:
    """A linux/amd64 + linux/arm64 image index copied by ``skopeo copy --all`` to ``repo:multi``."""
    index = build_index(layouts / "src", seed=seed, tag="multi")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", f"docker://{registry_server.host}/{repo}:multi", "--all")
    return index


def test_pull_all_platforms_then_push_to_another_repository_keeps_every_digest(
    ctr_cli: Ctr, registry_server: DockyardServer, repo: str, pushed_index: BuiltIndex
) -> None:
    source, target = f"{registry_server.host}/{repo}:multi", f"{registry_server.host}/{repo}-copy:multi"

    ctr_cli.pull(source, "--all-platforms")

    assert ctr_cli.images() == {source: (OCI_INDEX, pushed_index.digest)}
    every_digest = {pushed_index.digest}
    for image in pushed_index.images:
        every_digest |= {image.digest, *image.blob_digests}
    assert ctr_cli.content() == every_digest

    ctr_cli.push(target, source)

    with httpx.Client(base_url=registry_server.url, timeout=30.0) as client:
        assert head_manifest(client, f"{repo}-copy", "multi", OCI_INDEX) == pushed_index.digest
        assert_repository_holds(client, f"{repo}-copy", pushed_index)


def test_push_to_another_repository_mounts_every_blob(
    ctr_cli: Ctr, skopeo_cli: Skopeo, access_logged_server: DockyardServer, layouts: Path, seed: int
) -> None:
    """ctr labels what it pulled with its source repository and pushes it elsewhere by mounting."""
    server = access_logged_server
    source, target = f"interop/a{seed:x}", f"interop/b{seed:x}"
    index = build_index(layouts / "src", seed=seed, tag="multi")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", f"docker://{server.host}/{source}:multi", "--all")
    ctr_cli.pull(f"{server.host}/{source}:multi", "--all-platforms")

    ctr_cli.push(f"{server.host}/{target}:multi", f"{server.host}/{source}:multi")

    blobs = {digest for image in index.images for digest in image.blob_digests}
    mounts = access_log_lines(server, f"POST /v2/{target}/blobs/uploads/?mount=", at_least=len(blobs))
    assert {line.split("mount=")[1].split("&")[0] for line in mounts} == blobs
    assert all(f"from={source} " in line and '" 201 ' in line for line in mounts), mounts
    assert access_log_lines(server, f"PATCH /v2/{target}/") == []
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        assert head_manifest(client, target, "multi", OCI_INDEX) == index.digest
        assert_repository_holds(client, target, index)


def test_pull_of_one_platform_fetches_only_that_child(
    ctr_cli: Ctr, registry_server: DockyardServer, repo: str, pushed_index: BuiltIndex
) -> None:
    source = f"{registry_server.host}/{repo}:multi"
    arm64 = pushed_index.image_for("linux", "arm64")

    ctr_cli.pull(source, "--platform", "linux/arm64")

    assert ctr_cli.images() == {source: (OCI_INDEX, pushed_index.digest)}
    assert ctr_cli.content() == {pushed_index.digest, arm64.digest, *arm64.blob_digests}


def test_import_then_push_uploads_every_blob_unchanged(
    ctr_cli: Ctr, skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    """Imported content has no source repository to mount from: ctr uploads every blob itself."""
    index = build_index(layouts / "src", layers=3, layer_size=256 * 1024, seed=seed, tag="v1")
    archive = layouts / "src.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted((layouts / "src").rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layouts / "src")), recursive=False)
    name = f"{registry_server.host}/{repo}"

    # The layout tags the index "v1"; --base-name makes that <name>:v1.
    ctr_cli.run("images", "import", "--all-platforms", "--no-unpack", "--base-name", name, str(archive))
    assert ctr_cli.images() == {f"{name}:v1": (OCI_INDEX, index.digest)}
    ctr_cli.push(f"{name}:v1", f"{name}:v1")

    with httpx.Client(base_url=registry_server.url, timeout=30.0) as client:
        assert head_manifest(client, repo, "v1", OCI_INDEX) == index.digest
        assert_repository_holds(client, repo, index)
        served = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_INDEX})
        assert served.content == read_blob(layouts / "src", index.digest)
        assert [m["digest"] for m in json.loads(served.content)["manifests"]] == [
            i.digest for i in index.images
        ]

    # And skopeo takes out exactly what went in.
    out = layouts / "out"
    skopeo_cli.copy(f"docker://{name}:v1", f"oci:{out}:v1", "--all")
    assert resolve_tag(out, "v1").digest == index.digest
    assert layout_digests(out) == layout_digests(layouts / "src")
