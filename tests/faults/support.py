"""What the fault tests share: the answer a failing dependency must give, and backing services
that can be stopped and started again in place (same ports, same data)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import httpx

from tests.support.services import PostgresServer, SeaweedFS


def assert_unavailable(response: httpx.Response) -> None:
    """503 with ``Retry-After`` and the JSON error body naming ``UNAVAILABLE``."""
    body = response.read()
    assert response.status_code == 503, (
        response.request.method,
        response.request.url,
        response.status_code,
        body[:300],
    )
    assert int(response.headers["retry-after"]) > 0, response.headers
    assert response.headers["content-type"].startswith("application/json"), response.headers
    errors = json.loads(body)["errors"]
    assert errors[0]["code"] == "UNAVAILABLE", errors
    assert errors[0]["message"], errors


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll ``condition`` until it holds (generous: the machine may be busy), else fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def kill_seaweedfs(store: SeaweedFS) -> None:
    """``kill -9`` the store (as a crash would); ``restart_seaweedfs`` brings it back."""
    store.stop()


def restart_seaweedfs(store: SeaweedFS, timeout: float = 90.0) -> None:
    """Start the killed store again with its very command line: same ports, same data."""
    assert store.process is not None and store.process.poll() is not None
    log = open(store.root / "weed.log", "ab")  # noqa: SIM115 - the child owns it
    store.process = subprocess.Popen(
        store.process.args, stdout=log, stderr=subprocess.STDOUT, cwd=store.root, start_new_session=True
    )

    def answers() -> bool:
        try:
            store.client().head_bucket(Bucket=store.bucket)
            return True
        except Exception:
            return False

    wait_for(answers, "SeaweedFS answering again", timeout)


def _pg_ctl(pg: PostgresServer, *args: str) -> None:
    assert pg.bin_dir is not None
    pg._run(str(pg.bin_dir / "pg_ctl"), "-D", str(pg.root / "data"), *args)


def stop_postgres(pg: PostgresServer) -> None:
    """A fast shutdown, as an operator's restart or a failover does (sessions get AdminShutdown)."""
    _pg_ctl(pg, "-m", "fast", "-w", "-t", "60", "stop")


def start_postgres(pg: PostgresServer) -> None:
    """Start the stopped cluster again on its port (the options ``PostgresServer.start`` used)."""
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={pg.port}",
            f"-c unix_socket_directories={pg.root}",
            "-c max_connections=500",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c shared_buffers=64MB",
        ]
    )
    _pg_ctl(pg, "-l", str(pg.root / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
