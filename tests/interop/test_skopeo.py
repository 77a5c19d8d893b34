"""skopeo against dockyard: copies in and out, multi-arch indexes, deletes, cross-repository mounts.

skopeo (containers/image) is what podman, buildah and CRI-O use to talk to registries, so a
registry that skopeo can copy through byte for byte works for that whole family.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.clients import ClientError, Skopeo, access_log_lines
from tests.support.oci_layout import (
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    build_image,
    build_index,
    layout_digests,
    read_blob,
    resolve_tag,
)
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def assert_layout_blobs_intact(layout: Path) -> None:
    """Every file under ``blobs/sha256`` holds bytes whose sha256 is its name."""
    for path in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{path} is corrupt"


def push_image(skopeo_cli: Skopeo, layout: Path, tag: str, destination: str) -> None:
    skopeo_cli.copy(f"oci:{layout}:{tag}", destination)


@pytest.fixture
def pushed_image(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> BuiltImage:
    """A three-layer image copied by skopeo from an OCI layout to ``repo:v1``."""
    image = build_image(layouts / "src", layers=3, layer_size=512 * 1024, seed=seed, tag="v1")
    push_image(skopeo_cli, layouts / "src", "v1", f"docker://{registry_server.host}/{repo}:v1")
    return image


def test_copy_image_in_and_out_keeps_manifest_and_blob_digests(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, pushed_image: BuiltImage
) -> None:
    out = layouts / "out"
    skopeo_cli.copy(f"docker://{registry_server.host}/{repo}:v1", f"oci:{out}:v1")

    pulled = resolve_tag(out, "v1")
    assert pulled.digest == pushed_image.digest
    assert pulled.media_type == OCI_MANIFEST
    assert read_blob(out, pulled.digest) == read_blob(layouts / "src", pushed_image.digest)
    assert layout_digests(out) == layout_digests(layouts / "src")
    assert layout_digests(out) == {pushed_image.digest, *pushed_image.blob_digests}
    assert_layout_blobs_intact(out)
    # The layers that came back are the gzip'd tars whose digests the config lists as diff_ids.
    for layer, diff_id in zip(pushed_image.layers, pushed_image.diff_ids, strict=True):
        tar_bytes = gzip.decompress(read_blob(out, layer.digest))
        assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            assert sum(member.size for member in tar.getmembers()) == 512 * 1024


def test_inspect_raw_returns_the_pushed_manifest_bytes(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, pushed_image: BuiltImage
) -> None:
    expected = read_blob(layouts / "src", pushed_image.digest)
    assert skopeo_cli.inspect_raw(f"docker://{registry_server.host}/{repo}:v1") == expected
    assert skopeo_cli.inspect_raw(f"docker://{registry_server.host}/{repo}@{pushed_image.digest}") == expected


def test_inspect_reads_the_image_config(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, pushed_image: BuiltImage, seed: int
) -> None:
    info = skopeo_cli.inspect(f"docker://{registry_server.host}/{repo}:v1")

    assert info["Digest"] == pushed_image.digest
    assert info["Layers"] == [layer.digest for layer in pushed_image.layers]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Labels"] == {"dockyard.test.seed": str(seed)}
    assert info["RepoTags"] == ["v1"]


def test_inspect_config_returns_the_config_blob(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, pushed_image: BuiltImage
) -> None:
    out = skopeo_cli.run(
        "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{registry_server.host}/{repo}:v1"
    ).stdout
    assert out.encode() == read_blob(layouts / "src", pushed_image.config.digest)
    assert json.loads(out)["rootfs"]["diff_ids"] == list(pushed_image.diff_ids)


def test_list_tags_lists_every_pushed_tag(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, pushed_image: BuiltImage
) -> None:
    for tag in ("v2", "latest"):
        push_image(skopeo_cli, layouts / "src", "v1", f"docker://{registry_server.host}/{repo}:{tag}")

    assert sorted(skopeo_cli.list_tags(f"docker://{registry_server.host}/{repo}")) == ["latest", "v1", "v2"]


def test_copy_all_multi_arch_index_in_and_out_keeps_every_digest(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    src, out = layouts / "src", layouts / "out"
    index = build_index(src, platforms=[("linux", "amd64"), ("linux", "arm64")], seed=seed, tag="multi")
    remote = f"docker://{registry_server.host}/{repo}"

    # No --preserve-digests and no --format: an OCI index must go through unconverted by default.
    skopeo_cli.copy(f"oci:{src}:multi", f"{remote}:multi", "--all")

    raw_index = skopeo_cli.inspect_raw(f"{remote}:multi")
    assert raw_index == read_blob(src, index.digest)
    assert json.loads(raw_index)["mediaType"] == OCI_INDEX
    for image in index.images:
        assert skopeo_cli.inspect_raw(f"{remote}@{image.digest}") == read_blob(src, image.digest)

    skopeo_cli.copy(f"{remote}:multi", f"oci:{out}:multi", "--all")

    pulled = resolve_tag(out, "multi")
    assert (pulled.digest, pulled.media_type) == (index.digest, OCI_INDEX)
    assert layout_digests(out) == layout_digests(src)
    assert_layout_blobs_intact(out)


def test_inspect_of_multi_arch_index_resolves_the_requested_platform(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    index = build_index(layouts / "src", seed=seed, tag="multi")
    remote = f"docker://{registry_server.host}/{repo}:multi"
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", remote, "--all")

    for os_name, arch in (("linux", "amd64"), ("linux", "arm64")):
        info = skopeo_cli.inspect(remote, "--override-os", os_name, "--override-arch", arch)
        image = index.image_for(os_name, arch)
        assert info["Digest"] == index.digest  # skopeo reports the digest of what the tag names
        assert (info["Os"], info["Architecture"]) == (os_name, arch)
        assert info["Layers"] == [layer.digest for layer in image.layers]


def test_copy_without_all_takes_only_the_requested_platform(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    index = build_index(layouts / "src", seed=seed, tag="multi")
    remote = f"docker://{registry_server.host}/{repo}:multi"
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", remote, "--all")

    out = layouts / "out"
    skopeo_cli.run("--override-arch", "arm64", "copy", "--src-tls-verify=false", remote, f"oci:{out}:arm64")
    arm64 = index.image_for("linux", "arm64")
    assert resolve_tag(out, "arm64").digest == arm64.digest
    assert layout_digests(out) == {arm64.digest, *arm64.blob_digests}


def test_delete_by_digest_removes_the_manifest(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, pushed_image: BuiltImage
) -> None:
    remote = f"docker://{registry_server.host}/{repo}"
    skopeo_cli.delete(f"{remote}@{pushed_image.digest}")

    for reference in (f"{remote}@{pushed_image.digest}", f"{remote}:v1"):
        result = skopeo_cli.run("inspect", "--tls-verify=false", "--raw", reference, check=False)
        assert result.returncode != 0
        assert "manifest unknown" in result.stderr
    assert "v1" not in skopeo_cli.list_tags(remote)


def test_delete_of_an_unknown_digest_fails(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, pushed_image: BuiltImage
) -> None:
    unknown = "sha256:" + "0" * 64
    with pytest.raises(ClientError):
        skopeo_cli.delete(f"docker://{registry_server.host}/{repo}@{unknown}")
    # The pushed image is untouched.
    assert skopeo_cli.inspect(f"docker://{registry_server.host}/{repo}:v1")["Digest"] == pushed_image.digest


def test_copy_between_repositories_mounts_layers_and_target_is_pullable(
    skopeo_cli: Skopeo, access_logged_server: DockyardServer, layouts: Path, seed: int
) -> None:
    server = access_logged_server
    source, target = f"interop/a{seed:x}", f"interop/b{seed:x}"
    image = build_image(layouts / "src", layers=3, layer_size=256 * 1024, seed=seed, tag="t")
    push_image(skopeo_cli, layouts / "src", "t", f"docker://{server.host}/{source}:t")

    skopeo_cli.copy(f"docker://{server.host}/{source}:t", f"docker://{server.host}/{target}:t")

    # skopeo knows (from its blob-info cache) that the layers live in ``source`` on this
    # registry, so it asks for a mount instead of uploading them again; every mount must succeed.
    # That cache is one file shared by every skopeo and podman on the machine: busy, a record can
    # be skipped, and that layer is then uploaded again (skopeo's choice, not the registry's).
    mounts = access_log_lines(server, f"POST /v2/{target}/blobs/uploads/?", at_least=1)
    mounted = [layer for layer in image.layers if any(layer.digest.replace(":", "%3A") in m for m in mounts)]
    assert mounted, f"skopeo tried no mount:\n{server.log()}"
    assert all('" 201 ' in line for line in mounts), mounts
    patches = access_log_lines(server, f"PATCH /v2/{target}/blobs/uploads/")
    # the config (never mounted by skopeo) and any layer skopeo did not ask to mount
    assert len(patches) <= 1 + len(image.layers) - len(mounted), patches

    # The target is a full image of its own: it survives the deletion of the source.
    skopeo_cli.delete(f"docker://{server.host}/{source}@{image.digest}")
    out = layouts / "out"
    skopeo_cli.copy(f"docker://{server.host}/{target}:t", f"oci:{out}:t")
    assert resolve_tag(out, "t").digest == image.digest
    assert layout_digests(out) == layout_digests(layouts / "src")
    assert_layout_blobs_intact(out)


def test_copy_all_as_docker_schema2_keeps_docker_manifest_list(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    """Docker clients push Docker schema 2 manifests and manifest lists; they must round-trip as is."""
    index = build_index(layouts / "src", seed=seed, tag="multi")
    remote = f"docker://{registry_server.host}/{repo}:multi"
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", remote, "--all", "--format", "v2s2")

    raw_list = skopeo_cli.inspect_raw(remote)
    manifest_list = json.loads(raw_list)
    assert manifest_list["mediaType"] == DOCKER_MANIFEST_LIST
    assert [m["mediaType"] for m in manifest_list["manifests"]] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    assert skopeo_cli.inspect(remote)["Digest"] == "sha256:" + hashlib.sha256(raw_list).hexdigest()

    # ``dir:`` stores manifests exactly as served: no conversion on the way out.
    out = layouts / "out"
    skopeo_cli.copy(remote, f"dir:{out}", "--all")
    assert (out / "manifest.json").read_bytes() == raw_list
    for child in manifest_list["manifests"]:
        served = (out / f"{child['digest'].split(':')[1]}.manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(served).hexdigest() == child["digest"]
        layers = [layer["digest"] for layer in json.loads(served)["layers"]]
        platform = child["platform"]
        assert layers == [
            layer.digest for layer in index.image_for(platform["os"], platform["architecture"]).layers
        ]
        for digest in layers:
            assert "sha256:" + hashlib.sha256((out / digest.split(":")[1]).read_bytes()).hexdigest() == digest


def test_list_tags_follows_link_pagination(
    skopeo_cli: Skopeo, start_server: Callable[..., DockyardServer], layouts: Path, seed: int
) -> None:
    server = start_server(env={"DOCKYARD_MAX_PAGE_SIZE": "2"})
    build_image(layouts / "src", layers=1, layer_size=1024, seed=seed, tag="v1")
    tags = ["1.0", "1.1", "2.0", "latest", "stable"]
    for tag in tags:
        push_image(skopeo_cli, layouts / "src", "v1", f"docker://{server.host}/paged/repo:{tag}")

    assert skopeo_cli.list_tags(f"docker://{server.host}/paged/repo") == tags


def test_copy_over_an_existing_tag_moves_it_and_keeps_the_old_manifest(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    old = build_image(layouts / "old", layers=1, layer_size=4096, seed=seed, tag="t")
    new = build_image(layouts / "new", layers=1, layer_size=4096, seed=seed + 1, tag="t")
    remote = f"docker://{registry_server.host}/{repo}"
    push_image(skopeo_cli, layouts / "old", "t", f"{remote}:t")
    push_image(skopeo_cli, layouts / "new", "t", f"{remote}:t")

    assert skopeo_cli.inspect(f"{remote}:t")["Digest"] == new.digest
    assert skopeo_cli.inspect_raw(f"{remote}@{old.digest}") == read_blob(layouts / "old", old.digest)
    assert skopeo_cli.list_tags(remote) == ["t"]


def test_copy_layers_larger_than_the_manifest_size_limit(
    skopeo_cli: Skopeo, registry_server: DockyardServer, repo: str, layouts: Path, seed: int
) -> None:
    """Blob bodies stream: the 4 MiB manifest limit must not cap a layer upload or download."""
    image = build_image(layouts / "src", layers=2, layer_size=6 * 1024 * 1024, seed=seed, tag="big")
    remote = f"docker://{registry_server.host}/{repo}:big"
    push_image(skopeo_cli, layouts / "src", "big", remote)

    out = layouts / "out"
    skopeo_cli.copy(remote, f"oci:{out}:big")
    assert resolve_tag(out, "big").digest == image.digest
    assert all(layer.size > 6 * 1024 * 1024 for layer in image.layers)
    assert layout_digests(out) == layout_digests(layouts / "src")
    assert_layout_blobs_intact(out)
