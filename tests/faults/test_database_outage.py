"""PostgreSQL stopped (a fast shutdown: sessions get AdminShutdown, new connections are refused)
and started again while two nodes take pushes and pulls.

Every answer during the outage is a success or a 503 with ``Retry-After`` and the JSON error
body (never a 400 "connection lost", never a 500); every push answered 201 is pullable and
intact afterwards; both nodes serve again once the database is back, without a restart.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from tests.faults.support import start_postgres, stop_postgres, wait_for
from tests.support.api_helpers import OCI_MANIFEST, digest_of, image_manifest
from tests.support.server import DockyardServer
from tests.support.services import PostgresServer, SeaweedFS, SharedBackends, postgres_bin_dir, unavailable


@pytest.fixture(scope="module")
def database() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this module's own: the test stops it."""
    if postgres_bin_dir() is None:
        unavailable("the PostgreSQL server is not installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@dataclass
class Tally:
    """Every answer the load got, and what was acknowledged (must be there afterwards)."""

    answers: list[tuple[str, str, int, str, str]] = field(
        default_factory=list
    )  # method, path, status, Retry-After, body
    pushed: list[tuple[str, str, bytes, list[bytes]]] = field(
        default_factory=list
    )  # repo, tag, manifest, blobs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, r: httpx.Response) -> httpx.Response:
        with self.lock:
            self.answers.append(
                (
                    r.request.method,
                    r.request.url.path,
                    r.status_code,
                    r.headers.get("retry-after", ""),
                    r.text[:300],
                )
            )
        return r

    def count(self, status: int) -> int:
        with self.lock:
            return sum(1 for a in self.answers if a[2] == status)


def _push_and_pull(client: httpx.Client, tally: Tally, repo: str, n: int) -> None:
    """One image push (two single-POST blobs, a tagged manifest), then pulls of it and of the
    repository's tags (once the repository exists: before, its 404 would be right)."""
    config, layer = os.urandom(200), os.urandom(64 * 1024)
    stored = []
    for blob in (config, layer):
        r = tally.note(
            client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob)
        )
        stored.append(r.status_code == 201)
    if any(stored) or any(p[0] == repo for p in tally.pushed):
        tally.note(client.get(f"/v2/{repo}/tags/list"))
    if not all(stored):
        return
    manifest = image_manifest(config, [layer])
    tag = f"t{n}"
    r = tally.note(
        client.put(f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    )
    if r.status_code == 201:
        with tally.lock:
            tally.pushed.append((repo, tag, manifest, [config, layer]))
        tally.note(client.get(f"/v2/{repo}/manifests/{tag}"))
        tally.note(client.get(f"/v2/{repo}/blobs/{digest_of(layer)}"))


def test_a_database_restart_under_push_and_pull_load(
    database: PostgresServer, seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = SharedBackends(seaweedfs, database).server_env(redirect=False)
    root = tmp_path_factory.mktemp("pg-outage")
    nodes = [DockyardServer(root / f"node{i}", workers=1, env=env) for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda node: node.start(timeout=60), nodes))
    tally = Tally()
    stop = threading.Event()

    def load(worker: int) -> None:
        node = nodes[worker % len(nodes)]
        with httpx.Client(base_url=node.url, timeout=90.0) as client:
            n = 0
            while not stop.is_set():
                _push_and_pull(client, tally, f"load/w{worker}", n)
                n += 1

    try:
        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(load, i) for i in range(4)]
            try:
                wait_for(lambda: len(tally.pushed) >= 4, "pushes before the outage")
                stop_postgres(database)
                before = tally.count(503)
                wait_for(lambda: tally.count(503) >= before + 8, "503s while the database is down")
                start_postgres(database)
                pushed = len(tally.pushed)
                # Both nodes serve again, by themselves: pushes through each are acknowledged.
                wait_for(lambda: len(tally.pushed) >= pushed + 8, "pushes after the database came back")
            finally:
                stop.set()
                for worker in workers:
                    worker.result(timeout=120)

        statuses = {a[2] for a in tally.answers}
        assert statuses <= {200, 201, 503}, [a for a in tally.answers if a[2] not in (200, 201, 503)][:5]
        unavailable_answers = [a for a in tally.answers if a[2] == 503]
        assert unavailable_answers
        for method, path, _, retry_after, body in unavailable_answers:
            assert int(retry_after) > 0, (method, path)
            assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE", (method, path, body)
        for node in nodes:
            assert "Traceback" not in node.log(), node.log()[-3000:]
        # Nothing acknowledged was lost: every 201 image, pulled through either node, is intact.
        with httpx.Client(timeout=60.0) as client:
            for i, (repo, tag, manifest, blobs) in enumerate(tally.pushed):
                url = nodes[i % len(nodes)].url
                r = client.get(f"{url}/v2/{repo}/manifests/{tag}")
                assert r.status_code == 200 and r.content == manifest, (repo, tag, r.status_code)
                for blob in blobs:
                    assert client.get(f"{url}/v2/{repo}/blobs/{digest_of(blob)}").content == blob
    finally:
        for node in nodes:
            node.stop()
