"""A real ``dockyard serve`` process on loopback, for tests that speak HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DockyardServer:
    """One ``dockyard serve`` subprocess. ``url`` is ``http://127.0.0.1:<port>``.

    A server behind TLS or access control takes ``scheme="https"``, the ``verify`` httpx needs to
    reach it (an ``ssl.SSLContext``, with a client certificate for mTLS) and the ``ready_statuses``
    its ``GET /v2/`` answers when up (401 when it asks for credentials).
    """

    data_dir: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    scheme: str = "http"
    verify: Any = True
    ready_statuses: tuple[int, ...] = (200,)
    _started_once: bool = False

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> DockyardServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"dockyard-{self.port}.log"
        env = {**os.environ, **self.env}
        cmd = [
            sys.executable, "-m", "dockyard", "serve",
            "--listen", self.host,
            "--data-dir", str(self.data_dir),
            "--workers", str(self.workers),
            *self.extra_args,
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._port_taken() and not self._started_once:
                    # Another test process took the free port first (pytest -n): pick another.
                    self.port = free_port()
                    return self.start(timeout)
                raise RuntimeError(f"dockyard exited early:\n{self.log()}")
            try:
                probe = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=self.verify)
                if probe.status_code in self.ready_statuses:
                    self._started_once = True
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"dockyard did not answer in {timeout}s:\n{self.log()}")

    def _port_taken(self) -> bool:
        return "address already in use" in self.log().lower()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """``kill -9`` the whole process group (all workers), as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> DockyardServer:
        self.kill()
        return self.start()
