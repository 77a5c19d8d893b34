"""``dockyard push`` of a 1 GiB image to the three-node S3 deployment goes direct: the nodes
receive under 1 % of the blob's bytes, and every node serves the blob afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.client.support import build_big_image, cli_json
from tests.support.server import DockyardServer

GIB = 1 << 30


def _received(nodes: list[DockyardServer]) -> float:
    total = 0.0
    for node in nodes:
        text = httpx.get(f"{node.url}/metrics", timeout=60).text
        total += sum(
            float(v) for v in re.findall(r"^dockyard_http_request_bytes_total\{[^}]*\} (\S+)$", text, re.M)
        )
    return total


@pytest.mark.slow
def test_a_1_gib_push_goes_direct_and_the_nodes_receive_under_1_percent(
    cluster: list[DockyardServer], tmp_path: Path
) -> None:
    image = build_big_image(tmp_path / "layout", GIB)
    before = _received(cluster)
    doc = cli_json("push", f"{image.layout}:latest", f"{cluster[0].host}/direct/gib:v1", "--jobs", "4")
    received = _received(cluster) - before
    layer = doc["blobs"][image.layer.digest]
    assert layer["how"] == "direct"
    assert received < 0.01 * GIB, received
    print(f"\n1 GiB direct push: the nodes received {received:.0f} bytes ({100 * received / GIB:.4f} %)")
    for node in cluster:
        r = httpx.head(f"{node.url}/v2/direct/gib/blobs/{image.layer.digest}", timeout=60)
        assert r.status_code == 200 and r.headers["content-length"] == str(GIB)
