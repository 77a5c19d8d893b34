"""Per-request metrics on /metrics: exact sums over every worker, whichever worker is scraped."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_helpers import push_blob
from tests.support.server import DockyardServer

StartServer = Callable[..., DockyardServer]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SCRAPES = 6


def scrape(server: DockyardServer) -> tuple[str, Samples]:
    """One scrape on a new connection (so either worker may answer it)."""
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, method: str, route: str, status: int) -> float:
    return value(samples, "dockyard_http_requests_total", method=method, route=route, status=str(status))


def per_request_samples(samples: Samples) -> Samples:
    """The per-request samples except the scrapes' own (which each scrape adds to)."""
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("dockyard_http_")
        and key[0] != "dockyard_http_requests_in_flight"
        and ("route", "metrics") not in key[1]
    }


def worker_pids(server: DockyardServer) -> list[int]:
    assert server.process is not None
    parent = server.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def wait_for_workers(
    server: DockyardServer, count: int, gone: int | None = None, timeout: float = 20.0
) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if len(pids) == count and gone not in pids:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"expected {count} workers, have {worker_pids(server)}")


def test_every_scrape_reports_the_exact_totals_of_all_workers(start_server: StartServer) -> None:
    server = start_server(workers=2)
    repo = f"metrics/{uuid.uuid4().hex[:12]}"
    _, before = scrape(server)
    blobs = [os.urandom(size) for size in (1000, 5000, 70_000)]
    pushed = sum(map(len, blobs))

    for _ in range(40):  # a new connection each: the workers share the listening socket
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            assert c.get("/v2/").status_code == 200
    digests = []
    for data in blobs:
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            digests.append(push_blob(c, repo, data))
    pulls = 0
    for _ in range(3):
        for digest, data in zip(digests, blobs, strict=True):
            with httpx.Client(base_url=server.url, timeout=30.0) as c:
                r = c.get(f"/v2/{repo}/blobs/{digest}")
                assert r.status_code == 200 and r.content == data
                assert c.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
            pulls += 1
    for i in range(7):
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            assert c.get(f"/v2/{repo}/manifests/missing-{i}").status_code == 404
            assert c.get(f"/no/such/{repo}/path").status_code == 404

    texts = []
    scrapes = []
    for _ in range(SCRAPES):
        text, samples = scrape(server)
        texts.append(text)
        scrapes.append(samples)

    for samples in scrapes:
        delta = {key: v - before.get(key, 0.0) for key, v in samples.items()}
        assert requests(delta, "GET", "api_version", 200) == 40
        assert requests(delta, "POST", "start_upload", 201) == len(blobs)
        assert requests(delta, "GET", "get_blob", 200) == pulls
        assert requests(delta, "HEAD", "get_blob", 200) == pulls
        assert requests(delta, "GET", "get_manifest", 404) == 7
        assert requests(delta, "GET", "other", 404) == 7
        assert value(delta, "dockyard_http_response_bytes_total", route="get_blob") == 3 * pushed
        assert value(delta, "dockyard_http_request_bytes_total", route="start_upload") == pushed
        for method, route, count in [
            ("GET", "api_version", 40),
            ("GET", "get_blob", pulls),
            ("HEAD", "get_blob", pulls),
            ("GET", "get_manifest", 7),
            ("GET", "other", 7),
        ]:
            histogram = "dockyard_http_request_duration_seconds"
            assert value(delta, f"{histogram}_count", method=method, route=route) == count
            assert value(delta, f"{histogram}_bucket", method=method, route=route, le="+Inf") == count
        # Every worker's figures, whichever one answered.
        assert per_request_samples(samples) == per_request_samples(scrapes[0])
        # The scrape being answered is in flight; the other worker is idle.
        assert value(samples, "dockyard_http_requests_in_flight") >= 1

    for text in texts:
        # Valid exposition: one HELP and one TYPE per family, the registry-wide figures kept.
        for family in {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}:
            assert text.count(f"# TYPE {family} ") == 1 and text.count(f"# HELP {family} ") == 1
        assert "dockyard_blob_bytes " in text and "dockyard_repositories " in text
    for key in scrapes[-1]:
        for label, label_value in key[1]:
            assert repo not in label_value and "/" not in label_value, (key, label)
    routes = {dict(key[1]).get("route") for key in scrapes[-1]} - {None}
    assert routes <= {"api_version", "start_upload", "get_blob", "get_manifest", "metrics", "other"}, routes


def test_a_dead_workers_requests_stay_counted_after_it_is_replaced(start_server: StartServer) -> None:
    server = start_server(workers=2)
    first, second = wait_for_workers(server, 2)
    _, before = scrape(server)
    for _ in range(30):
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            assert c.get("/v2/").status_code == 200
    _, counted = scrape(server)
    assert requests(counted, "GET", "api_version", 200) - requests(before, "GET", "api_version", 200) == 30

    os.kill(first, signal.SIGKILL)  # as a crash would; the server starts a new worker
    pids = wait_for_workers(server, 2, gone=first)
    assert second in pids
    for _ in range(SCRAPES):
        _, samples = scrape(server)
        assert per_request_samples(samples) == per_request_samples(counted)

    for _ in range(10):
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            assert c.get("/v2/").status_code == 200
    for _ in range(SCRAPES):  # the killed worker's in-flight count was forgotten, at once
        _, samples = scrape(server)
        total = requests(samples, "GET", "api_version", 200) - requests(before, "GET", "api_version", 200)
        assert total == 40
        assert value(samples, "dockyard_http_requests_in_flight") == 1  # the scrape itself


def test_one_worker_reports_its_requests(start_server: StartServer) -> None:
    server = start_server(workers=1)
    _, before = scrape(server)
    for _ in range(5):
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            assert c.get("/v2/").status_code == 200
    _, samples = scrape(server)
    assert requests(samples, "GET", "api_version", 200) - requests(before, "GET", "api_version", 200) == 5
    assert requests(samples, "GET", "metrics", 200) - requests(before, "GET", "metrics", 200) == 1
    assert value(samples, "dockyard_http_requests_in_flight") == 1


def test_a_worker_file_not_yet_sized_does_not_fail_the_scrape(start_server: StartServer) -> None:
    """A file in the metrics directory that is not a worker's table (empty, or another format):
    the scrape skips it, never a 500. (prometheus_client's files, read while a starting worker
    had not yet sized its own, once made every scrape fail.)"""
    server = start_server(workers=2)
    pids = wait_for_workers(server, 2)
    scrape(server)
    directories = {
        path.parent
        for pid in pids
        for path in Path(os.environ.get("TMPDIR", "/tmp")).glob(f"dockyard-metrics-*/*_{pid}.db")
    }
    assert len(directories) == 1, directories
    directory = directories.pop()
    (directory / "requests_4194301.db").touch()  # pids no worker has
    (directory / "requests_4194302.db").write_bytes(b"not a table" * 100)
    for _ in range(SCRAPES):
        _, samples = scrape(server)
        assert requests(samples, "GET", "metrics", 200) >= 1


def test_requests_in_flight_on_killed_workers_are_forgotten(start_server: StartServer) -> None:
    """Requests a worker was handling when it died are in flight no more; the rest stays exact."""
    server = start_server(workers=2)
    pids = wait_for_workers(server, 2)
    stalled = []
    for _ in range(4):  # bodies promised and never sent: each handler waits, in flight
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(
            f"POST /v2/metrics/stalled/blobs/uploads/?digest=sha256:{'0' * 64} HTTP/1.1\r\n"
            "Host: x\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"x" * 10
        )
        stalled.append(s)
    deadline = time.monotonic() + 20
    while value(scrape(server)[1], "dockyard_http_requests_in_flight") != 5:  # the 4 and the scrape
        assert time.monotonic() < deadline, "the stalled requests were never in flight"
        time.sleep(0.05)

    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for_workers(server, 2, gone=pids[0])
    wait_for_workers(server, 2, gone=pids[1])
    for _ in range(SCRAPES):
        assert value(scrape(server)[1], "dockyard_http_requests_in_flight") == 1  # the scrape itself
    for s in stalled:
        s.close()
