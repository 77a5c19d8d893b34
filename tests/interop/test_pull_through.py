"""Real clients through a pull-through cache: what skopeo, podman (containers/image) and
containerd pull through dockyard's proxy is the upstream's image byte for byte, and what the
cache holds stays pullable once the upstream is gone."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.interop.clients import Skopeo
from tests.interop.conftest import Ctr, Podman
from tests.support.oci_layout import (
    OCI_INDEX,
    build_image,
    build_index,
    layout_digests,
    read_blob,
    resolve_tag,
)
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop


@pytest.fixture
def upstream_and_cache(start_server: Callable[..., DockyardServer]) -> tuple[DockyardServer, DockyardServer]:
    """A dockyard to pull from, and a pull-through cache of it (two workers)."""
    upstream = start_server(workers=1)
    return upstream, start_server(workers=2, env={"DOCKYARD_PROXY__REMOTE_URL": upstream.url})


def test_skopeo_copies_an_image_through_the_cache_and_again_without_the_upstream(
    skopeo_cli: Skopeo,
    upstream_and_cache: tuple[DockyardServer, DockyardServer],
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    upstream, proxy = upstream_and_cache
    image = build_image(layouts / "src", layers=3, layer_size=512 * 1024, seed=seed, tag="v1")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:v1", f"docker://{upstream.host}/{repo}:v1")

    raw = skopeo_cli.inspect_raw(f"docker://{proxy.host}/{repo}:v1")
    assert raw == read_blob(layouts / "src", image.digest)
    assert skopeo_cli.list_tags(f"docker://{proxy.host}/{repo}") == ["v1"]
    for out in ("through", "cached"):
        skopeo_cli.copy(f"docker://{proxy.host}/{repo}:v1", f"oci:{layouts / out}:v1")
        assert resolve_tag(layouts / out, "v1").digest == image.digest
        assert layout_digests(layouts / out) == layout_digests(layouts / "src")
        for path in (layouts / out / "blobs" / "sha256").iterdir():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        upstream.stop()  # the second copy comes from the cache alone


def test_containerd_pulls_one_platform_of_an_index_through_the_cache(
    ctr_cli: Ctr,
    skopeo_cli: Skopeo,
    upstream_and_cache: tuple[DockyardServer, DockyardServer],
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    """containerd's own resolver (HEAD by tag, then GETs by digest) through the cache: it gets the
    upstream's index and the arm64 image, and the cache fetched no other platform's layers."""
    upstream, proxy = upstream_and_cache
    index = build_index(layouts / "src", seed=seed, tag="multi")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:multi", f"docker://{upstream.host}/{repo}:multi", "--all")
    arm64, amd64 = index.image_for("linux", "arm64"), index.image_for("linux", "amd64")

    ctr_cli.pull(f"{proxy.host}/{repo}:multi", "--platform", "linux/arm64")

    assert ctr_cli.images() == {f"{proxy.host}/{repo}:multi": (OCI_INDEX, index.digest)}
    assert ctr_cli.content() == {index.digest, arm64.digest, *arm64.blob_digests}
    with httpx.Client(base_url=proxy.url, timeout=30) as cache:
        upstream.stop()  # what the cache holds, it serves alone
        for digest in arm64.blob_digests:
            assert cache.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
        for digest in set(amd64.blob_digests) - set(arm64.blob_digests):
            assert cache.head(f"/v2/{repo}/blobs/{digest}").status_code == 503  # never fetched


def test_podman_pulls_through_the_cache(
    podman_cli: Podman,
    skopeo_cli: Skopeo,
    upstream_and_cache: tuple[DockyardServer, DockyardServer],
    repo: str,
    layouts: Path,
    seed: int,
) -> None:
    upstream, proxy = upstream_and_cache
    image = build_image(layouts / "src", layers=2, layer_size=256 * 1024, seed=seed, tag="v1")
    skopeo_cli.copy(f"oci:{layouts / 'src'}:v1", f"docker://{upstream.host}/{repo}:v1")

    assert podman_cli.pull(f"{proxy.host}/{repo}:v1") == image.config.digest.partition(":")[2]
    info = podman_cli.inspect_image(f"{proxy.host}/{repo}:v1")
    assert info["Digest"] == image.digest
    assert info["RootFS"]["Layers"] == list(image.diff_ids)
