"""Helpers for the lifecycle tests: signals, exits, refused connections, a PostgreSQL that can be
stopped and started again, and polling with generous deadlines (never a timed assertion)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.server import DockyardServer
from tests.support.services import PostgresServer

DEADLINE = 120.0  # seconds: an order of magnitude above what a loaded 2-core machine needs


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)


def sigterm(server: DockyardServer) -> None:
    """SIGTERM to the main process only, as Kubernetes and ``docker stop`` send it."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGTERM)


def exit_code(server: DockyardServer, timeout: float = DEADLINE) -> int:
    assert server.process is not None
    return server.process.wait(timeout=timeout)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def ready_status(server: DockyardServer) -> int | None:
    try:
        return httpx.get(f"{server.url}/health/ready", timeout=10).status_code
    except httpx.TransportError:
        return None


def serve_once(data_dir: Path, env: dict[str, str], port: int, timeout: float = DEADLINE) -> tuple[int, str]:
    """Run ``dockyard serve`` expected to exit by itself; its exit code and output."""
    cmd = [
        sys.executable, "-m", "dockyard", "serve", "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir), "--workers", "1",
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- a PostgreSQL this module may stop and start ---------------------------------------------------


def _options(pg: PostgresServer) -> str:
    return " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={pg.port}",
            f"-c unix_socket_directories={pg.root}",
            "-c max_connections=200",
            "-c fsync=off",
            "-c shared_buffers=32MB",
        ]
    )


def pg_halt(pg: PostgresServer) -> None:
    """Stop the server (``-m fast``: connections are cut, as in an outage); the data stays."""
    assert pg.bin_dir is not None
    pg._run(str(pg.bin_dir / "pg_ctl"), "-D", str(pg.root / "data"), "-m", "fast", "-w", "stop")


def pg_resume(pg: PostgresServer) -> None:
    assert pg.bin_dir is not None
    pg._run(
        str(pg.bin_dir / "pg_ctl"), "-D", str(pg.root / "data"), "-l", str(pg.root / "postgres.log"),
        "-o", _options(pg), "-w", "-t", "60", "start",
    )  # fmt: skip
