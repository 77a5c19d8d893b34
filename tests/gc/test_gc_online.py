"""Collection in a loop while a seeded random load pushes, tags, untags, deletes and pulls.

No pull of a tagged image fails, no push fails because a blob vanished (blobs are uploaded first
and the manifest up to a tenth of the grace period later: the margin is the other nine tenths,
however slow the machine), and at the end every unreachable byte is gone while everything
reachable is intact and fsck is clean.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.api_helpers import OCI_MANIFEST, digest_of, image_manifest
from tests.support.server import DockyardServer

GRACE = 20.0
DURATION = float(os.environ.get("GC_LOAD_SECONDS", "60"))
SEED = int(os.environ.get("GC_LOAD_SEED", "20261128"))
MINIMUM = 20  # pushes and pulls at least, however slow the machine: the load goes on until then


class Load:
    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.seed = seed
        self.failures: list[str] = []
        self.requests = 0
        self.pushes = 0
        self.pulls = 0
        self.lock = threading.Lock()

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def count(self, n: int = 1) -> None:
        with self.lock:
            self.requests += n

    def enough(self) -> bool:
        with self.lock:
            return self.pushes > MINIMUM and self.pulls > MINIMUM

    def worker(self, index: int, stop: float) -> None:
        rng = random.Random(self.seed * 100 + index)
        repo = f"load/w{index}"
        mine: dict[str, tuple[bytes, list[bytes]]] = {}  # tag -> (manifest, blobs) this worker keeps
        shared = [os.urandom(20_000) for _ in range(3)]  # reused layers: dedupe against collected copies
        with httpx.Client(base_url=self.url, timeout=60) as client:
            # The duration, and on a slow machine as long as it takes to reach the minimum load.
            while time.monotonic() < stop or (not self.enough() and time.monotonic() < stop + 600):
                op = rng.random()
                try:
                    if op < 0.45:
                        self.push(client, rng, repo, mine, shared)
                    elif op < 0.75 and mine:
                        self.pull(client, repo, rng.choice(sorted(mine)), mine)
                    elif op < 0.9 and mine:
                        tag = rng.choice(sorted(mine))
                        if client.delete(f"/v2/{repo}/manifests/{tag}").status_code != 202:
                            self.fail(f"untag {repo}:{tag}")
                        self.count()
                        del mine[tag]
                    else:
                        r = client.get(f"/v2/{repo}/tags/list")
                        self.count()
                        if r.status_code >= 500:
                            self.fail(f"tags list {r.status_code}")
                except httpx.TransportError as exc:
                    self.fail(f"transport error: {exc!r}")

    def push(
        self,
        client: httpx.Client,
        rng: random.Random,
        repo: str,
        mine: dict[str, tuple[bytes, list[bytes]]],
        shared: list[bytes],
    ) -> None:
        config = os.urandom(200)
        layers = [os.urandom(rng.randint(1, 60_000)), rng.choice(shared)]
        for blob in (config, *layers):
            r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob)
            self.count()
            if r.status_code != 201:
                self.fail(f"blob push {r.status_code} {r.text[:200]}")
                return
        time.sleep(rng.uniform(0, GRACE / 10))  # the manifest arrives later
        body = image_manifest(config, layers)
        tag = f"t{rng.randint(0, 5)}"
        r = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
        self.count()
        if r.status_code != 201:
            self.fail(f"manifest push {r.status_code} {r.text[:200]}")
            return
        with self.lock:
            self.pushes += 1
        mine[tag] = (body, [config, *layers])

    def pull(
        self, client: httpx.Client, repo: str, tag: str, mine: dict[str, tuple[bytes, list[bytes]]]
    ) -> None:
        body, blobs = mine[tag]
        r = client.get(f"/v2/{repo}/manifests/{tag}")
        self.count()
        if r.status_code != 200 or r.content != body:
            self.fail(f"pull manifest {repo}:{tag} -> {r.status_code}")
            return
        for blob in blobs:
            got = client.get(f"/v2/{repo}/blobs/{digest_of(blob)}")
            self.count()
            if got.status_code != 200 or got.content != blob:
                self.fail(f"pull blob {repo}:{tag} {digest_of(blob)} -> {got.status_code}")
        with self.lock:
            self.pulls += 1


@pytest.mark.slow
def test_collection_in_a_loop_under_load(start_server: Callable[..., DockyardServer], tmp_path: Path) -> None:
    config = tmp_path / "gc.yaml"
    config.write_text(f"gc:\n  interval_seconds: 0.5\n  grace_seconds: {GRACE}\n  delete_untagged: true\n")
    server = start_server(workers=2, extra_args=["--config", str(config)])
    load = Load(server.url, SEED)
    stop = time.monotonic() + DURATION
    threads = [threading.Thread(target=load.worker, args=(i, stop)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"gc load: seed {SEED}, {load.requests} requests, {load.pushes} pushes, {load.pulls} pulls")
    assert load.failures == [], load.failures[:20]
    assert load.pushes > MINIMUM and load.pulls > MINIMUM

    # Quiet now: nothing is in flight once the server stops, so a collection without a grace
    # period (no waiting it out) must leave exactly what tags reach.
    with httpx.Client(base_url=server.url, timeout=60) as client:
        reachable: set[str] = set()
        for repo in client.get("/v2/_catalog").json()["repositories"]:
            for tag in client.get(f"/v2/{repo}/tags/list").json()["tags"]:
                r = client.get(f"/v2/{repo}/manifests/{tag}")
                assert r.status_code == 200
                reachable.add(r.headers["docker-content-digest"])
                manifest = json.loads(r.content)
                for desc in [manifest["config"], *manifest["layers"]]:
                    blob = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
                    assert blob.status_code == 200 and digest_of(blob.content) == desc["digest"]
                    reachable.add(desc["digest"])
    server.stop()
    final = tmp_path / "final-gc.yaml"
    final.write_text("gc:\n  grace_seconds: 0\n  delete_untagged: true\n")
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard",
            "gc",
            "--config",
            str(final),
            "--data-dir",
            str(server.data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},
    )
    assert report.returncode == 0, report.stderr
    fsck = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--data-dir", str(server.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **server.env},
    )
    checked = json.loads(fsck.stdout)
    assert checked["clean"], fsck.stdout
    # What is stored is exactly what tags reach: every stored digest hashed, none an orphan.
    assert checked["orphan_bytes"] == []
    assert checked["blobs_checked"] == len(reachable)
