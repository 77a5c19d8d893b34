"""Replication: a push to registry A is copied to registry B (another dockyard) by the events,
with identical digests and referrers; a target that is down catches up; a copy cut mid-layer
resumes where it was cut."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.client.proxy import FaultProxy
from tests.events.test_events import FAST_RETRIES, dockyard_cli, metric, wait_until
from tests.support.api_helpers import (
    OCI_LAYER,
    OCI_MANIFEST,
    api_client,
    digest_of,
    dumps,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
)
from tests.support.server import DockyardServer

MiB = 1 << 20


def rule(target: str, **extra: Any) -> dict[str, Any]:
    return {"name": "b", "url": target, **extra}


def manifest_digest(server: DockyardServer, repo: str, reference: str) -> str | None:
    r = httpx.head(
        f"{server.url}/v2/{repo}/manifests/{reference}",
        headers={"Accept": OCI_MANIFEST},
        timeout=30,
    )
    return r.headers["docker-content-digest"] if r.status_code == 200 else None


def wait_for_manifest(server: DockyardServer, repo: str, reference: str, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while (found := manifest_digest(server, repo, reference)) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{repo}:{reference} did not appear on {server.url} in {timeout}s")
        time.sleep(0.2)
    return found


def test_a_push_to_a_appears_on_b_with_its_referrers_and_only_what_the_rule_wants(
    configured_server: Callable[..., DockyardServer],
) -> None:
    b = configured_server()
    a = configured_server(
        workers=2,
        events=FAST_RETRIES,
        replication={"rules": [rule(b.url, repositories=["app/**"], tags="v[0-9.]+", deletes=True)]},
    )
    with api_client(a.url) as c:
        image = push_image(c, "app/web", "v1", seed="web")
        empty = b"{}"
        push_blob(c, "app/web", empty)
        empty_descriptor = {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": digest_of(empty),
            "size": 2,
        }
        signature = dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/example.signature",
                "config": empty_descriptor,
                "layers": [empty_descriptor],
                "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
            }
        )
        assert put_manifest(c, "app/web", digest_of(signature), signature, OCI_MANIFEST).status_code == 201
        push_image(c, "app/web", "dev", seed="dev")  # a tag the rule does not want
        push_image(c, "other/thing", "v1", seed="other")  # a repository it does not want
        last = push_image(c, "app/web", "v2", seed="last")
    assert wait_for_manifest(b, "app/web", "v1") == image.digest
    assert wait_for_manifest(b, "app/web", "v2") == last.digest
    with api_client(b.url) as c:
        for blob in (image.config, *image.layers):
            r = c.get(f"/v2/app/web/blobs/{digest_of(blob)}")
            assert r.status_code == 200 and r.content == blob
        wait_until(lambda: c.get(f"/v2/app/web/referrers/{image.digest}").json()["manifests"] != [])
        referrers = c.get(f"/v2/app/web/referrers/{image.digest}").json()["manifests"]
        assert [d["digest"] for d in referrers] == [digest_of(signature)]
    wait_until(lambda: metric(a, "dockyard_events_pending", "replication.b") == 0)
    assert manifest_digest(b, "app/web", "dev") is None
    assert manifest_digest(b, "other/thing", "v1") is None
    # a tag deleted here goes there too (deletes: true)
    with api_client(a.url) as c:
        assert c.delete("/v2/app/web/manifests/v1").status_code == 202
    wait_until(lambda: manifest_digest(b, "app/web", "v1") is None)
    status = json.loads(dockyard_cli(a, "replication", "status", "--json"))
    assert [(s["rule"], s["pending"], s["dead"]) for s in status] == [("replication.b", 0, 0)]
    page = httpx.get(f"{a.url}/ui/replication", timeout=30)
    assert page.status_code == 200 and "<td>replication.b</td>" in page.text
    assert status[0]["copied"] >= 4 and status[0]["last_success"] is not None


def test_a_target_that_is_down_catches_up_when_it_is_back(
    configured_server: Callable[..., DockyardServer],
) -> None:
    b = configured_server()
    a = configured_server(events=FAST_RETRIES, replication={"rules": [rule(b.url)]})
    b.stop()
    with api_client(a.url) as c:
        images = [push_image(c, "late/app", f"v{i}", seed=f"late{i}") for i in range(3)]
    wait_until(lambda: (metric(a, "dockyard_events_failed_total", "replication.b") or 0) >= 1)
    assert (metric(a, "dockyard_events_pending", "replication.b") or 0) >= 1
    b.start()
    for i, image in enumerate(images):
        assert wait_for_manifest(b, "late/app", f"v{i}") == image.digest
    wait_until(lambda: metric(a, "dockyard_events_pending", "replication.b") == 0)


def test_a_copy_cut_mid_layer_resumes_instead_of_starting_over(
    configured_server: Callable[..., DockyardServer],
) -> None:
    b = configured_server()
    proxy = FaultProxy(b.port).start()
    try:
        a = configured_server(events=FAST_RETRIES, replication={"rules": [rule(proxy.url)]})
        layer = os.urandom(40 * MiB)
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        with api_client(a.url) as c:
            push_blob(c, "big/app", config)
            push_blob(c, "big/app", layer)
            body = image_manifest(config, [layer], layer_type=OCI_LAYER)
            proxy.cut_upstream_at(20 * MiB)  # the copy's connection to B dies half-way through the layer
            assert put_manifest(c, "big/app", "v1", body, OCI_MANIFEST).status_code == 201
        assert wait_for_manifest(b, "big/app", "v1") == digest_of(body)
        assert len(proxy.fired) == 1 and proxy.fired[0].startswith("cut_up")
        with api_client(b.url) as c:
            assert c.get(f"/v2/big/app/blobs/{digest_of(layer)}").content == layer
        # resumed: the layer went up about once, not once and then again from its start
        assert proxy.upstream < 1.4 * len(layer)
    finally:
        proxy.stop()


def test_a_scheduled_sync_pulls_new_and_moved_tags_from_an_upstream(
    configured_server: Callable[..., DockyardServer],
) -> None:
    upstream = configured_server()
    with api_client(upstream.url) as c:
        first = push_image(c, "lib/base", "1.0", seed="first")
        push_image(c, "lib/base", "nightly", seed="nightly")  # the rule's tags do not want it
    here = configured_server(
        replication={
            "sync": [
                {
                    "name": "up",
                    "url": upstream.url,
                    "repositories": ["lib/base", "lib/absent"],
                    "tags": "[0-9.]+",
                    "prefix": "mirror/",
                    "interval_seconds": 1,
                }
            ]
        }
    )
    assert wait_for_manifest(here, "mirror/lib/base", "1.0") == first.digest
    with api_client(upstream.url) as c:
        second = push_image(c, "lib/base", "2.0", seed="second")
        moved = push_image(c, "lib/base", "1.0", seed="moved")  # the tag moves upstream
    assert wait_for_manifest(here, "mirror/lib/base", "2.0") == second.digest
    wait_until(lambda: manifest_digest(here, "mirror/lib/base", "1.0") == moved.digest)
    assert manifest_digest(here, "mirror/lib/base", "nightly") is None
    assert (metric(here, "dockyard_events_delivered_total", "sync.up") or 0) >= 3
    status = json.loads(dockyard_cli(here, "replication", "status", "--json"))
    assert [(s["rule"], s["last_error"]) for s in status] == [("sync.up", None)]
