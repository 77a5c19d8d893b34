"""buildah against dockyard: images built from scratch, pushed, checked over plain HTTP, pulled back.

buildah builds with no daemon and pushes through containers/image, as podman does; here it also
builds the images, so these tests are the only ones whose manifests no test helper wrote.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.clients import Skopeo, access_log_lines
from tests.interop.conftest import Buildah
from tests.support.api_helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    api_client,
    digest_of,
)
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop

OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST_TYPES = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

# buildah commit --format, buildah push --format, and the media types the pushed manifest holds.
FORMATS = {
    "oci": ("oci", "oci", OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
    "docker": ("docker", "v2s2", DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
}


def random_file(folder: Path, name: str, seed: int, size: int) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(f"{seed}/{name}").randbytes(size))
    return path


def build_from_scratch(
    buildah: Buildah, image: str, files: dict[str, Path], *, base: str = "scratch", **config: str
) -> str:
    """``buildah from`` ``base``, copy ``files`` (destination -> source) in, configure, commit ``image``.

    ``config`` holds ``buildah config`` flags (``arch="arm64"``, ``label="k=v"``, ``format="docker"``
    goes to ``commit``); returns the image ID.
    """
    commit_format = config.pop("format", "oci")
    container = buildah.run("from", *buildah.policy, base).stdout.strip()
    for destination, source in files.items():
        buildah.run("copy", container, str(source), destination)
    flags = [f"--{name}={value}" for name, value in config.items()]
    buildah.run("config", "--os=linux", *flags, container)
    image_id = buildah.run("commit", *buildah.policy, "--quiet", "--format", commit_format, container, image)
    buildah.run("rm", container)
    return image_id.stdout.strip()


def get_manifest(client: httpx.Client, repo: str, reference: str) -> tuple[httpx.Response, dict[str, Any]]:
    """GET a manifest the way a client does; checks the served digest against the bytes."""
    response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES})
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["docker-content-digest"] == digest_of(response.content)
    manifest = json.loads(response.content)
    assert response.headers["content-type"] == manifest["mediaType"]
    return response, manifest


def get_blob(client: httpx.Client, repo: str, descriptor: dict[str, Any]) -> bytes:
    """GET a blob and check it against its descriptor: same size, bytes that hash to its digest."""
    response = client.get(f"/v2/{repo}/blobs/{descriptor['digest']}", follow_redirects=True)
    assert response.status_code == 200, (descriptor, response.status_code)
    assert digest_of(response.content) == descriptor["digest"]
    assert len(response.content) == descriptor["size"]
    return response.content


def layer_files(layer: bytes) -> dict[str, bytes]:
    """The regular files in a gzip'd layer tar, by path without the leading ``./`` or ``/``."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        return {
            member.name.removeprefix("./").lstrip("/"): tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


@pytest.mark.parametrize("image_format", sorted(FORMATS))
def test_push_of_an_image_built_from_scratch_stores_manifest_config_and_layers(
    buildah_cli: Buildah,
    skopeo_cli: Skopeo,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    seed: int,
    image_format: str,
) -> None:
    commit_format, push_format, manifest_type, config_type, layer_type = FORMATS[image_format]
    payload = random_file(tmp_path / "context", "payload.bin", seed, 256 * 1024)
    image_id = build_from_scratch(
        buildah_cli,
        "localhost/interop/scratch:built",
        {"/data/payload.bin": payload},
        format=commit_format,
        arch="amd64",
        label=f"dockyard.test.seed={seed}",
        env="DOCKYARD=1",
        cmd="/data/payload.bin",
    )

    pushed = buildah_cli.push(
        "localhost/interop/scratch:built",
        f"docker://{registry_server.host}/{repo}:v1",
        "--format",
        push_format,
    )

    with api_client(registry_server.url) as client:
        response, manifest = get_manifest(client, repo, "v1")
        assert response.headers["docker-content-digest"] == pushed
        assert manifest["mediaType"] == manifest_type
        head = client.head(f"/v2/{repo}/manifests/{pushed}", headers={"Accept": manifest_type})
        assert (head.status_code, head.headers["docker-content-digest"]) == (200, pushed)

        # buildah pushes the config it committed, byte for byte: its digest is the image ID.
        assert manifest["config"]["mediaType"] == config_type
        assert manifest["config"]["digest"] == f"sha256:{image_id}"
        config = json.loads(get_blob(client, repo, manifest["config"]))
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        assert config["config"]["Labels"]["dockyard.test.seed"] == str(seed)  # buildah adds its own too
        assert "DOCKYARD=1" in config["config"]["Env"]

        # One layer, compressed on push; uncompressed, it is the diff_id and holds the file.
        [layer] = manifest["layers"]
        assert layer["mediaType"] == layer_type
        layer_bytes = get_blob(client, repo, layer)
        assert config["rootfs"]["diff_ids"] == [digest_of(gzip.decompress(layer_bytes))]
        assert layer_files(layer_bytes) == {"data/payload.bin": payload.read_bytes()}

    info = skopeo_cli.inspect(f"docker://{registry_server.host}/{repo}:v1")
    assert info["Digest"] == pushed
    assert info["Labels"] == config["config"]["Labels"]
    assert info["Layers"] == [layer["digest"]]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")


@pytest.mark.parametrize(
    ("compression", "layer_type", "magic"),
    [("gzip", OCI_LAYER, b"\x1f\x8b"), ("zstd", OCI_LAYER_ZSTD, b"\x28\xb5\x2f\xfd")],
    ids=["gzip", "zstd"],
)
def test_image_pulled_back_by_buildah_holds_the_pushed_file(
    buildah: str,
    buildah_cli: Buildah,
    registry_server: DockyardServer,
    repo: str,
    tmp_path: Path,
    seed: int,
    compression: str,
    layer_type: str,
    magic: bytes,
) -> None:
    payload = random_file(tmp_path / "context", "payload.bin", seed, 128 * 1024)
    image_id = build_from_scratch(buildah_cli, "localhost/interop/pull:built", {"/payload.bin": payload})
    remote = f"{registry_server.host}/{repo}:v1"
    pushed = buildah_cli.push(
        "localhost/interop/pull:built", f"docker://{remote}", "--compression-format", compression
    )
    with api_client(registry_server.url) as client:
        _, manifest = get_manifest(client, repo, pushed)
        [layer] = manifest["layers"]
        assert layer["mediaType"] == layer_type
        assert get_blob(client, repo, layer).startswith(magic)

    # A second, empty storage: everything it gets comes from dockyard, and buildah checks each
    # layer it unpacks against the config's diff_ids.
    other = Buildah.create(buildah, tmp_path / "other")
    assert other.pull(remote) == image_id
    container = other.run("from", *other.policy, "--tls-verify=false", remote).stdout.strip()
    root = Path(other.run("mount", container).stdout.strip())  # vfs: a plain folder, no mount
    assert (root / "payload.bin").read_bytes() == payload.read_bytes()
    assert other.pull(f"{registry_server.host}/{repo}@{pushed}") == image_id


def test_second_image_on_the_same_base_reuses_the_base_layer(
    buildah_cli: Buildah, access_logged_server: DockyardServer, tmp_path: Path, seed: int
) -> None:
    """A blob the repository holds answers HEAD with 200, so buildah does not upload it again."""
    server, repo = access_logged_server, f"interop/layers{seed:x}"
    base_file = random_file(tmp_path / "context", "base.bin", seed, 64 * 1024)
    app_file = random_file(tmp_path / "context", "app.bin", seed, 64 * 1024)
    build_from_scratch(buildah_cli, "localhost/interop/base:1", {"/base.bin": base_file})
    build_from_scratch(
        buildah_cli, "localhost/interop/app:1", {"/app.bin": app_file}, base="localhost/interop/base:1"
    )

    buildah_cli.push("localhost/interop/base:1", f"docker://{server.host}/{repo}:base")
    buildah_cli.push("localhost/interop/app:1", f"docker://{server.host}/{repo}:app")

    with api_client(server.url) as client:
        _, base = get_manifest(client, repo, "base")
        _, app = get_manifest(client, repo, "app")
        [base_layer] = base["layers"]
        assert len(app["layers"]) == 2
        assert app["layers"][0]["digest"] == base_layer["digest"]
        files: dict[str, bytes] = {}
        for layer in app["layers"]:
            files |= layer_files(get_blob(client, repo, layer))
        assert files == {"base.bin": base_file.read_bytes(), "app.bin": app_file.read_bytes()}
        config = json.loads(get_blob(client, repo, app["config"]))
        assert len(config["rootfs"]["diff_ids"]) == 2

    quoted = base_layer["digest"].replace(":", "%3A")
    uploads = access_log_lines(server, f"PUT /v2/{repo}/blobs/uploads/", at_least=1)
    assert len([line for line in uploads if quoted in line]) == 1, uploads
    heads = access_log_lines(server, f"HEAD /v2/{repo}/blobs/{base_layer['digest']}", at_least=1)
    assert any('" 200 ' in line for line in heads), heads


def test_manifest_push_all_stores_the_index_and_every_platform(
    buildah_cli: Buildah, registry_server: DockyardServer, repo: str, tmp_path: Path, seed: int
) -> None:
    payloads = {}
    for arch in ("amd64", "arm64"):
        payloads[arch] = random_file(tmp_path / "context", f"{arch}.bin", seed, 32 * 1024)
        build_from_scratch(
            buildah_cli, f"localhost/interop/multi:{arch}", {"/payload.bin": payloads[arch]}, arch=arch
        )
    buildah_cli.run("manifest", "create", "localhost/interop/multi:list")
    for arch in ("amd64", "arm64"):
        buildah_cli.run(
            "manifest",
            "add",
            "localhost/interop/multi:list",
            f"containers-storage:localhost/interop/multi:{arch}",
        )

    digest_file = tmp_path / "index.digest"
    buildah_cli.run(
        "manifest", "push", *buildah_cli.policy, "--all", "--format", "oci", "--tls-verify=false",
        "--digestfile", str(digest_file),
        "localhost/interop/multi:list", f"docker://{registry_server.host}/{repo}:multi",
    )  # fmt: skip

    with api_client(registry_server.url) as client:
        response, index = get_manifest(client, repo, "multi")
        assert response.headers["docker-content-digest"] == digest_file.read_text().strip()
        assert index["mediaType"] == OCI_INDEX
        platforms = {child["platform"]["architecture"]: child for child in index["manifests"]}
        assert sorted(platforms) == ["amd64", "arm64"]
        for arch, child in platforms.items():
            child_response, manifest = get_manifest(client, repo, child["digest"])
            assert len(child_response.content) == child["size"]
            assert manifest["mediaType"] == child["mediaType"] == OCI_MANIFEST
            config = json.loads(get_blob(client, repo, manifest["config"]))
            assert config["architecture"] == arch
            [layer] = manifest["layers"]
            layer_bytes = get_blob(client, repo, layer)
            assert config["rootfs"]["diff_ids"] == [digest_of(gzip.decompress(layer_bytes))]
            assert layer_files(layer_bytes) == {"payload.bin": payloads[arch].read_bytes()}
