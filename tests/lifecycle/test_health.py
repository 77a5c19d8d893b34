"""Health endpoints: ``/health/live`` while the process answers, ``/health/ready`` while the
database and the blob store answer; no credentials needed, nothing about the deployment leaked."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.auth.support import Pki, start_auth_server
from tests.lifecycle.support import pg_halt, pg_resume, wait_for
from tests.support.api_helpers import api_client, push_blob
from tests.support.server import DockyardServer, free_port
from tests.support.services import PostgresServer


def _ready(node: DockyardServer) -> httpx.Response:
    return httpx.get(f"{node.url}/health/ready", timeout=30)


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_probes_need_no_credentials_in_any_auth_mode(tmp_path: Path, mode: str) -> None:
    node = start_auth_server(tmp_path / "data", mode)
    try:
        with httpx.Client(base_url=node.url, timeout=30) as anonymous:
            assert anonymous.get("/v2/").status_code == 401  # access control is on
            for path in ("/health/live", "/health/ready"):
                got = anonymous.get(path)
                assert got.status_code == 200, got.text
                assert got.headers["cache-control"] == "no-store"
                head = anonymous.head(path)
                assert head.status_code == 200 and head.content == b""
            assert anonymous.get("/health/live").json() == {"status": "live"}
            ready = anonymous.get("/health/ready").json()
            assert ready == {"status": "ready", "database": "ok", "storage": "ok", "draining": False}
    finally:
        node.stop()


def test_ready_says_which_part_is_down_and_recovers(tmp_path: Path, own_postgres: PostgresServer) -> None:
    own_postgres.start()
    node = DockyardServer(tmp_path / "data", env={"DOCKYARD_DATABASE_URL": own_postgres.url("postgres")})
    node.start(timeout=120)
    try:
        assert _ready(node).status_code == 200

        pg_halt(own_postgres)
        wait_for(lambda: _ready(node).status_code == 503, "ready turns 503 while PostgreSQL is down")
        down = _ready(node)
        assert down.json() == {
            "status": "unavailable",
            "database": "unavailable",
            "storage": "ok",
            "draining": False,
        }
        assert down.headers["retry-after"] == "1"
        for secret in ("127.0.0.1", str(own_postgres.port), "postgres", str(node.data_dir)):
            assert secret not in down.text  # the log says where; the probe only says what
        assert httpx.get(f"{node.url}/health/live", timeout=30).status_code == 200  # alive: no restart

        pg_resume(own_postgres)
        wait_for(lambda: _ready(node).status_code == 200, "ready again once PostgreSQL is back")
        with api_client(node.url) as client:
            push_blob(client, "health/back", os.urandom(100))

        blobs = node.data_dir / "blobs"
        blobs.rename(node.data_dir / "blobs-away")  # the volume is gone
        wait_for(lambda: _ready(node).status_code == 503, "ready turns 503 without the blob store")
        assert _ready(node).json()["storage"] == "unavailable"
        assert _ready(node).json()["database"] == "ok"
        (node.data_dir / "blobs-away").rename(blobs)
        wait_for(lambda: _ready(node).status_code == 200, "ready again with the blob store back")
    finally:
        node.stop()
    log = node.log()
    assert "readiness: the database is unavailable" in log and "readiness: the database answers again" in log


def test_health_listen_serves_the_probes_alone_over_plain_http_for_mtls(tmp_path: Path) -> None:
    """In mtls mode the handshake asks every client for a certificate, probes included: a
    kubelet has none. ``health_listen`` answers them on an address of their own."""
    pki = Pki.create(tmp_path / "pki")
    probes = f"127.0.0.1:{free_port()}"
    node = start_auth_server(tmp_path / "data", "mtls", pki=pki, settings={"health_listen": probes})
    try:
        with httpx.Client(base_url=f"http://{probes}", timeout=30) as kubelet:  # no TLS, no certificate
            ready = kubelet.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            assert kubelet.head("/health/live").status_code == 200
            assert kubelet.get("/v2/").status_code == 404  # the probes, and nothing else
            assert kubelet.get("/v2/_catalog").status_code == 404
    finally:
        node.stop()
