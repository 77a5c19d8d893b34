"""skopeo through a pull-through cache: what containers/image pulls through dockyard's proxy is
the upstream's image byte for byte, and stays pullable once the upstream is gone."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.clients import Skopeo
from tests.support.oci_layout import build_image, layout_digests, read_blob, resolve_tag
from tests.support.server import DockyardServer

pytestmark = pytest.mark.interop


def test_skopeo_copies_an_image_through_the_cache_and_again_without_the_upstream(
    skopeo_cli: Skopeo, start_server: Callable[..., DockyardServer], repo: str, layouts: Path, seed: int
) -> None:
    upstream = start_server(workers=1)
    proxy = start_server(workers=2, env={"DOCKYARD_PROXY__REMOTE_URL": upstream.url})
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
