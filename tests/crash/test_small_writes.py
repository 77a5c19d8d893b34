"""Small writes that share commits: what was acknowledged is on disk the moment its 201 left,
whatever it was grouped with, and a database locked by another process makes a push wait (or
503), never fail with a 500."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable

import httpx

from tests.crash.test_crash_points import Ledger, fsck
from tests.support.api_helpers import OCI_MANIFEST, digest_of, image_manifest
from tests.support.server import DockyardServer


async def _push_images(url: str, clients: int, images: int, ledger: Ledger) -> None:
    """``clients`` at once, each image a config and a layer by single POST, then its manifest
    by tag; every acknowledged write goes into the ledger as its 201 arrives."""
    queue = list(range(images))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            repo = f"small/r{i % 4}"
            config, layer = os.urandom(64), os.urandom(200)
            for blob in (config, layer):
                digest = digest_of(blob)
                r = await http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=blob)
                assert r.status_code == 201, r.text
                ledger.blobs[(repo, digest)] = blob
            body = image_manifest(config, [layer])
            r = await http.put(
                f"/v2/{repo}/manifests/t{i}", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert r.status_code == 201, r.text
            ledger.manifests[(repo, r.headers["docker-content-digest"])] = body
            ledger.tags[(repo, f"t{i}")] = r.headers["docker-content-digest"]

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


def test_concurrent_small_pushes_survive_a_kill_right_after_their_201s(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(workers=2)
    ledger = Ledger()
    asyncio.run(_push_images(server.url, clients=24, images=120, ledger=ledger))
    server.kill()  # kill -9, every worker, the moment the last 201 arrived
    server.start()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        ledger.verify(client)
    assert len(ledger.tags) == 120
    # No upload session, no staging directory: a small blob that arrives whole needs neither.
    assert not any((server.data_dir / "uploads").iterdir())
    fsck(server)


_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_a_push_waits_for_another_process_holding_the_database_write_lock(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(workers=1)
    database = server.data_dir / "metadata.db"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post(
            "/v2/busy/r/blobs/uploads/", params={"digest": digest_of(b"warm")}, content=b"warm"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_THE_WRITE_LOCK, str(database), "1.5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            began = time.monotonic()
            data = os.urandom(200)
            r = client.post("/v2/busy/r/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
            waited = time.monotonic() - began
        finally:
            holder.wait(timeout=30)
        assert r.status_code == 201, r.text
        assert waited >= 0.5  # it did wait for the other process, and then went through
        assert client.get(f"/v2/busy/r/blobs/{digest_of(data)}").content == data
    # The holder's transaction committed too: the database is whole.
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
