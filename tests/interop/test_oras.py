"""oras-py against dockyard: artifacts pushed and pulled, chunked uploads, referrers, OCI layouts.

oras-py (``pip install oras``) is the ORAS project's Python SDK. It speaks HTTP through
``requests``, so these tests also prove dockyard's answers suit a client that is not Go.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.interop.clients import Skopeo, access_log_lines
from tests.support.oci_layout import (
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    build_image,
    build_index,
    canonical_json,
    layout_digests,
    resolve_tag,
    sha256,
)
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
SBOM_TYPE = "application/vnd.dockyard.test.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.dockyard.test.signature.v1"


def oras_for(oras: ModuleType, server: DockyardServer) -> Any:
    return oras.client.OrasClient(hostname=server.host, insecure=True)


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def get_manifest(server: DockyardServer, repo: str, reference: str) -> httpx.Response:
    response = httpx.get(
        f"{server.url}/v2/{repo}/manifests/{reference}",
        headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
        timeout=30.0,
    )
    assert response.status_code == 200, response.text
    return response


def referrers(server: DockyardServer, repo: str, digest: str, **params: str) -> httpx.Response:
    response = httpx.get(f"{server.url}/v2/{repo}/referrers/{digest}", params=params, timeout=30.0)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].split(";")[0] == OCI_INDEX
    return response


@pytest.fixture
def pushed_image(
    oras: ModuleType,
    oras_layout: ModuleType,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    seed: int,
) -> BuiltImage:
    """A two-layer container image pushed to ``repo:image`` through oras-py's OCI layout support."""
    layout = tmp_path / "image"
    image = build_image(layout, layers=2, layer_size=64 * 1024, seed=seed, tag="image")
    response = oras_layout.NewLayout(str(layout)).push_to_registry(
        oras_for(oras, registry_server), f"{registry_server.host}/{repo}:image", tag="image"
    )
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == image.digest
    return image


def test_push_and_pull_artifact_files_round_trip(
    oras: ModuleType, registry_server: DockyardServer, repo: str, tmp_path: Path
) -> None:
    contents = {"readme.txt": b"hello from oras-py\n", "model.bin": bytes(range(256)) * 1000}
    paths = write_files(tmp_path / "in", contents)
    client = oras_for(oras, registry_server)
    target = f"{registry_server.host}/{repo}:v1"

    response = client.push(
        target=target,
        files=[str(paths[0]), f"{paths[1]}:application/vnd.dockyard.test.model"],
        manifest_annotations={"org.opencontainers.image.description": "two files"},
        disable_path_validation=True,
    )
    assert response.status_code == 201

    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert sorted(Path(p).name for p in pulled) == sorted(contents)
    for path in pulled:
        assert Path(path).read_bytes() == contents[Path(path).name]

    manifest = client.get_manifest(target)
    assert manifest["annotations"] == {"org.opencontainers.image.description": "two files"}
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.dockyard.test.model",
    ]
    assert client.get_tags(f"{registry_server.host}/{repo}") == ["v1"]
    # The digest the registry names is the digest of the bytes it serves.
    served = get_manifest(registry_server, repo, "v1")
    assert served.headers["Docker-Content-Digest"] == sha256(served.content)
    assert response.headers["Docker-Content-Digest"] == sha256(served.content)


def test_pull_by_digest_and_delete_tag(
    oras: ModuleType, registry_server: DockyardServer, repo: str, tmp_path: Path
) -> None:
    paths = write_files(tmp_path / "in", {"a.txt": b"a\n"})
    client = oras_for(oras, registry_server)
    digest = client.push(
        target=f"{registry_server.host}/{repo}:v1", files=[str(paths[0])], disable_path_validation=True
    ).headers["Docker-Content-Digest"]

    pulled = client.pull(target=f"{registry_server.host}/{repo}@{digest}", outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [b"a\n"]

    # oras-py's delete_tag resolves the tag with HEAD and deletes the manifest by digest.
    assert client.delete_tag(f"{registry_server.host}/{repo}", "v1") is True
    assert client.get_tags(f"{registry_server.host}/{repo}") == []


def test_chunked_push_sends_every_chunk_and_pulls_back_intact(
    oras: ModuleType, access_logged_server: DockyardServer, repo: str, tmp_path: Path, seed: int
) -> None:
    server = access_logged_server
    chunk_size = 64 * 1024
    big = (seed.to_bytes(8, "big") * (700 * 1024 // 8))[: 700 * 1024 + 123]
    contents = {"big.bin": big, "small.txt": b"fits in one chunk\n"}
    paths = write_files(tmp_path / "in", contents)
    client = oras_for(oras, server)
    target = f"{server.host}/{repo}:chunked"

    response = client.push(
        target=target,
        files=[str(p) for p in paths],
        do_chunked=True,
        chunk_size=chunk_size,
        disable_path_validation=True,
    )
    assert response.status_code == 201

    expected = math.ceil(len(big) / chunk_size) + 1  # + the one chunk of small.txt
    patches = access_log_lines(server, f"PATCH /v2/{repo}/blobs/uploads/", at_least=expected)
    assert len(patches) == expected, "\n".join(patches)
    assert all('" 202 ' in line for line in patches), patches

    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    for path in pulled:
        assert Path(path).read_bytes() == contents[Path(path).name]
    blob = httpx.get(f"{server.url}/v2/{repo}/blobs/{sha256(big)}", timeout=30.0)
    assert blob.status_code == 200
    assert blob.content == big


def test_artifact_pushed_with_subject_is_listed_by_referrers(
    oras: ModuleType,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    pushed_image: BuiltImage,
) -> None:
    client = oras_for(oras, registry_server)
    subject = oras.oci.Subject(
        mediaType=OCI_MANIFEST, digest=pushed_image.digest, size=pushed_image.manifest.size
    )
    sbom = write_files(tmp_path / "sbom", {"sbom.spdx.json": b'{"spdxVersion": "SPDX-2.3"}'})
    config = write_files(tmp_path / "config", {"config.json": b"{}"})

    # oras-py has no artifactType argument: the artifact's type is its config's mediaType,
    # which the referrers API must then report as artifactType.
    response = client.push(
        target=f"{registry_server.host}/{repo}:sbom",
        files=[f"{sbom[0]}:application/spdx+json"],
        manifest_config=f"{config[0]}:{SBOM_TYPE}",
        manifest_annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        subject=subject,
        disable_path_validation=True,
    )
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == pushed_image.digest
    sbom_digest = response.headers["Docker-Content-Digest"]

    listed = referrers(registry_server, repo, pushed_image.digest).json()
    assert listed["schemaVersion"] == 2
    assert listed["mediaType"] == OCI_INDEX
    assert listed["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": sbom_digest,
            "size": len(get_manifest(registry_server, repo, sbom_digest).content),
            "artifactType": SBOM_TYPE,
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        }
    ]

    # The referrer pulls back like any artifact.
    pulled = client.pull(target=f"{registry_server.host}/{repo}@{sbom_digest}", outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [b'{"spdxVersion": "SPDX-2.3"}']


def test_referrers_report_artifact_type_and_filter_on_it(
    oras: ModuleType,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    pushed_image: BuiltImage,
) -> None:
    """An OCI 1.1 artifact (``artifactType`` + empty config), built by hand, pushed through oras-py."""
    client = oras_for(oras, registry_server)
    container = client.get_container(f"{registry_server.host}/{repo}")
    signature = write_files(tmp_path / "sig", {"sig": b"not really a signature"})[0]
    empty = write_files(tmp_path / "empty", {"empty.json": EMPTY_JSON})[0]

    def upload(path: Path, media_type: str) -> dict[str, Any]:
        descriptor = {
            "mediaType": media_type,
            "digest": sha256(path.read_bytes()),
            "size": path.stat().st_size,
        }
        response = client.upload_blob(str(path), container, descriptor)
        assert response.status_code in (200, 201), response.text
        return descriptor

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": upload(empty, EMPTY_CONFIG),
        "layers": [upload(signature, "application/octet-stream")],
        "subject": pushed_image.manifest.to_json(),
        "annotations": {"dockyard.test": "signature"},
    }
    body = canonical_json(manifest)
    put = client.do_request(
        f"{registry_server.url}/v2/{repo}/manifests/{sha256(body)}",
        "PUT",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    assert put.headers["OCI-Subject"] == pushed_image.digest

    # A second referrer of another type, through oras-py's own push.
    sbom = write_files(tmp_path / "sbom", {"sbom.json": b"{}"})[0]
    client.push(
        target=f"{registry_server.host}/{repo}:sbom",
        files=[str(sbom)],
        manifest_config=f"{empty}:{SBOM_TYPE}",
        subject=oras.oci.Subject(OCI_MANIFEST, pushed_image.digest, pushed_image.manifest.size),
        disable_path_validation=True,
    )

    everything = referrers(registry_server, repo, pushed_image.digest)
    assert "OCI-Filters-Applied" not in everything.headers
    assert sorted(m["artifactType"] for m in everything.json()["manifests"]) == [SBOM_TYPE, SIGNATURE_TYPE]

    filtered = referrers(registry_server, repo, pushed_image.digest, artifactType=SIGNATURE_TYPE)
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert filtered.json()["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": sha256(body),
            "size": len(body),
            "artifactType": SIGNATURE_TYPE,
            "annotations": {"dockyard.test": "signature"},
        }
    ]
    # The subject's own referrers list is per repository and per digest: the artifact has none.
    assert referrers(registry_server, repo, sha256(body)).json()["manifests"] == []


@pytest.mark.parametrize("do_chunked", [False, True], ids=["monolithic", "chunked"])
def test_oci_layout_index_push_and_pull_through_oras_keeps_digests(
    oras: ModuleType,
    oras_layout: ModuleType,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    seed: int,
    do_chunked: bool,
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    index = build_index(src, layers=2, layer_size=100 * 1024, seed=seed, tag="multi")
    client = oras_for(oras, registry_server)
    target = f"{registry_server.host}/{repo}:multi"

    response = oras_layout.NewLayout(str(src)).push_to_registry(
        client, target, tag="multi", do_chunked=do_chunked, chunk_size=32 * 1024
    )
    assert response.headers["Docker-Content-Digest"] == index.digest

    oras_layout.NewLayoutFromRegistry(str(out), client, target, tag="multi")
    assert resolve_tag(out, "multi").digest == index.digest
    assert layout_digests(out) == layout_digests(src)
    for digest in layout_digests(src):
        algorithm, _, hex_digest = digest.partition(":")
        assert sha256((out / "blobs" / algorithm / hex_digest).read_bytes()) == digest


def test_image_pushed_by_oras_is_copied_out_by_skopeo(
    oras: ModuleType,
    oras_layout: ModuleType,
    skopeo_cli: Skopeo,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    seed: int,
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    index = build_index(src, seed=seed, tag="multi")
    oras_layout.NewLayout(str(src)).push_to_registry(
        oras_for(oras, registry_server), f"{registry_server.host}/{repo}:multi", tag="multi"
    )

    skopeo_cli.copy(f"docker://{registry_server.host}/{repo}:multi", f"oci:{out}:multi", "--all")

    assert resolve_tag(out, "multi").digest == index.digest
    assert layout_digests(out) == layout_digests(src)
    assert json.loads((out / "blobs" / "sha256" / index.digest.split(":")[1]).read_bytes())["manifests"]


def test_directory_push_is_pulled_back_as_the_same_tree(
    oras: ModuleType, registry_server: DockyardServer, repo: str, tmp_path: Path
) -> None:
    """oras-py tars and gzips a directory into one layer and unpacks it on pull."""
    tree = {"docs/readme.md": b"# hi\n", "docs/deep/data.bin": bytes(range(256)) * 64}
    source = tmp_path / "in"
    for name, content in tree.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    client = oras_for(oras, registry_server)
    target = f"{registry_server.host}/{repo}:dir"

    client.push(target=target, files=[str(source / "docs")], disable_path_validation=True)
    manifest = client.get_manifest(target)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]

    client.pull(target=target, outdir=str(tmp_path / "out"))
    for name, content in tree.items():
        assert (tmp_path / "out" / name).read_bytes() == content


def test_get_tags_follows_link_pagination(
    oras: ModuleType, start_server: Callable[..., DockyardServer], tmp_path: Path
) -> None:
    server = start_server(env={"DOCKYARD_MAX_PAGE_SIZE": "2"})
    client = oras_for(oras, server)
    paths = write_files(tmp_path / "in", {"a.txt": b"a\n"})
    tags = ["1.0", "1.1", "2.0", "latest", "stable"]
    for tag in tags:
        client.push(
            target=f"{server.host}/paged/repo:{tag}", files=[str(paths[0])], disable_path_validation=True
        )

    assert client.get_tags(f"{server.host}/paged/repo") == tags
    # Asking for more than the registry's page size still gets them, page by page.
    assert client.get_tags(f"{server.host}/paged/repo", N=3) == tags[:3]


def test_referrer_of_a_missing_subject_is_listed_until_deleted(
    oras: ModuleType, registry_server: DockyardServer, repo: str, tmp_path: Path
) -> None:
    """spec: a manifest's subject need not exist; its referrers list works all the same."""
    client = oras_for(oras, registry_server)
    missing = sha256(b"a manifest this registry never saw")
    empty = write_files(tmp_path / "in", {"empty.json": EMPTY_JSON})[0]

    assert referrers(registry_server, repo, missing).json()["manifests"] == []
    response = client.push(
        target=f"{registry_server.host}/{repo}:orphan",
        files=[str(empty)],
        manifest_config=f"{empty}:{SBOM_TYPE}",
        subject=oras.oci.Subject(OCI_MANIFEST, missing, 1234),
        disable_path_validation=True,
    )
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == missing
    listed = referrers(registry_server, repo, missing).json()["manifests"]
    assert [(m["digest"], m["artifactType"]) for m in listed] == [
        (response.headers["Docker-Content-Digest"], SBOM_TYPE)
    ]

    assert client.delete_tag(f"{registry_server.host}/{repo}", "orphan") is True
    assert referrers(registry_server, repo, missing).json()["manifests"] == []
