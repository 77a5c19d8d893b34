"""Garbage collection: what it keeps, what it frees, and that pulls never notice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dockyard.config import RetentionRule
from dockyard.gc import kept_manifests, tags_to_drop
from dockyard.registry.digests import Digest
from dockyard.registry.ports import RepositoryView
from tests.support.api_helpers import OCI_MANIFEST, digest_of, image_manifest, push_blob, push_image
from tests.support.server import DockyardServer


def d(n: int) -> Digest:
    return Digest.of(str(n).encode())


# -- the marking rules, on their own -------------------------------------------------------------


def view(**kw: Any) -> RepositoryView:
    created = {d(i): 0.0 for i in range(10)}
    return RepositoryView(
        created=created,
        subjects=kw.get("subjects", {}),
        children=kw.get("children", {}),
        tagged=kw.get("tagged", set()),
    )


def test_tagged_manifests_keep_their_children_and_referrers() -> None:
    v = view(tagged={d(0)}, children={d(0): {d(1), d(2)}}, subjects={d(3): d(1), d(4): d(9)})
    kept = kept_manifests(v, delete_untagged=True, keep_referrers=False)
    assert kept == {d(0), d(1), d(2), d(3)}


def test_untagged_manifests_stay_unless_the_policy_deletes_them() -> None:
    v = view(tagged={d(0)}, subjects={d(4): d(42)})  # d(42): a subject that is not there
    kept = kept_manifests(v, delete_untagged=False, keep_referrers=False)
    # Every non-referrer stays; a referrer of a subject that is gone goes with it.
    assert kept == {d(i) for i in range(10)} - {d(4)}
    assert d(4) in kept_manifests(v, delete_untagged=False, keep_referrers=True)


def test_retention_keeps_the_newest_and_the_protected_tags() -> None:
    now = 1_000_000.0
    tags = [(f"t{i}", d(i), now - i * 86400) for i in range(6)] + [("latest", d(9), now - 99 * 86400)]
    rule = RetentionRule(repository="ci/**", keep_last=2, keep_tags=["latest"])
    assert [t for t, _ in tags_to_drop([rule], "ci/app", tags, now)] == ["t2", "t3", "t4", "t5"]
    aged = RetentionRule(repository="ci/**", keep_last=2, max_age_days=3.5)
    assert [t for t, _ in tags_to_drop([aged], "ci/app", tags, now)] == ["latest", "t4", "t5"]
    assert tags_to_drop([rule], "other/app", tags, now) == []


# -- against a real server -----------------------------------------------------------------------


def gc(server: DockyardServer, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "dockyard", "gc", "--data-dir", str(server.data_dir), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def fsck_clean(server: DockyardServer) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--data-dir", str(server.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},  # the same backend as the server (S3 + PostgreSQL too)
    )
    assert json.loads(out.stdout)["clean"], out.stdout


@pytest.fixture
def server(start_server: Callable[..., DockyardServer]) -> DockyardServer:
    return start_server(env={"DOCKYARD_GC__GRACE_SECONDS": "0"})


def test_untagged_image_is_freed_and_the_tagged_one_stays_pullable(server: DockyardServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        keep = push_image(client, "gc/app", "v1", seed="keep")
        drop = push_image(client, "gc/app", "v2", seed="drop")
        assert client.delete("/v2/gc/app/manifests/v2").status_code == 202  # untag
        time.sleep(0.05)

        dry = gc(server, "--dry-run", "--delete-untagged")
        assert dry["dry_run"] and dry["manifests"] == [f"gc/app@{drop.digest}"]
        assert client.get(f"/v2/gc/app/manifests/{drop.digest}").status_code == 200  # dry: nothing gone

        report = gc(server, "--delete-untagged")
        assert report["manifests"] == [f"gc/app@{drop.digest}"]
        freed = {digest_of(drop.config), digest_of(drop.layers[0])}
        assert {link.split("@")[1] for link in report["links"]} == freed
        assert freed <= set(report["blobs"])
        assert report["bytes_freed"] >= len(drop.config) + len(drop.layers[0])

        assert client.get("/v2/gc/app/manifests/v1").content == keep.manifest
        for blob in (keep.config, *keep.layers):
            assert client.get(f"/v2/gc/app/blobs/{digest_of(blob)}").content == blob
        assert client.get(f"/v2/gc/app/manifests/{drop.digest}").status_code == 404
        again = gc(server, "--delete-untagged")  # nothing left to do
        assert again["manifests"] == [] and again["blobs"] == []
    fsck_clean(server)


def test_grace_period_protects_blobs_whose_manifest_has_not_arrived(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server()  # default grace: 1 hour
    with httpx.Client(base_url=server.url) as client:
        config, layer = os.urandom(100), os.urandom(1000)
        push_blob(client, "gc/slow", config)
        push_blob(client, "gc/slow", layer)
        report = gc(server, "--delete-untagged")
        assert report["links"] == [] and report["blobs"] == []
        # The manifest arrives "later": its blobs are still there.
        body = image_manifest(config, [layer])
        r = client.put("/v2/gc/slow/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201


def test_unreferenced_blobs_past_grace_are_collected_and_a_later_manifest_is_refused(
    server: DockyardServer,
) -> None:
    with httpx.Client(base_url=server.url) as client:
        config, layer = os.urandom(100), os.urandom(1000)
        push_blob(client, "gc/late", config)
        push_blob(client, "gc/late", layer)
        time.sleep(0.05)
        report = gc(server)
        assert {digest_of(config), digest_of(layer)} <= set(report["blobs"])
        body = image_manifest(config, [layer])
        r = client.put("/v2/gc/late/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_referrers_follow_their_subject(server: DockyardServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        subject = push_image(client, "gc/ref", "v1", seed="subject")
        referrer = push_image(
            client,
            "gc/ref",
            None,
            seed="sig",
            subject={"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.manifest)},
        )
        time.sleep(0.05)
        assert gc(server, "--delete-untagged")["manifests"] == []  # kept with its tagged subject
        assert client.delete("/v2/gc/ref/manifests/v1").status_code == 202
        time.sleep(0.05)
        gone = gc(server, "--delete-untagged")["manifests"]
        assert sorted(gone) == sorted([f"gc/ref@{subject.digest}", f"gc/ref@{referrer.digest}"])


def test_retention_rules_drop_old_tags(start_server: Callable[..., DockyardServer], tmp_path: Any) -> None:
    config = tmp_path / "dockyard.yaml"
    config.write_text(
        "gc:\n  grace_seconds: 0\n  delete_untagged: true\n"
        "  retention:\n    - repository: 'ci/**'\n      keep_last: 2\n      keep_tags: ['stable']\n"
    )
    server = start_server(extra_args=["--config", str(config)])
    with httpx.Client(base_url=server.url) as client:
        images = {}
        for i, tag in enumerate(["stable", "b1", "b2", "b3", "b4"]):
            images[tag] = push_image(client, "ci/app", tag, seed=str(i))
            time.sleep(0.02)
        report = gc(server, "--config", str(config), "--dry-run")
        assert sorted(report["tags"]) == ["ci/app:b1", "ci/app:b2"]
        assert sorted(report["manifests"]) == sorted(f"ci/app@{images[t].digest}" for t in ("b1", "b2"))
        gc(server, "--config", str(config))
        tags = client.get("/v2/ci/app/tags/list").json()["tags"]
        assert tags == ["b3", "b4", "stable"]


def test_deleted_repository_frees_its_bytes_and_metrics_say_so(server: DockyardServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        image = push_image(client, "gc/doomed", "v1", seed="doomed")
        assert client.delete("/v2/_dockyard/repositories/gc/doomed").status_code == 202
        assert client.get("/v2/gc/doomed/tags/list").status_code == 404
        time.sleep(0.05)
        report = gc(server)
        assert {digest_of(image.config), digest_of(image.layers[0]), image.digest} <= set(report["blobs"])
        metrics = client.get("/metrics").text
        assert "dockyard_gc_runs_total" in metrics
        assert "dockyard_gc_freed_bytes_total" in metrics
        assert "dockyard_blob_bytes" in metrics
    fsck_clean(server)
