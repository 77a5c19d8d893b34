"""nginx in front of dockyard nodes, as a load balancer is set up for a rolling restart
(docs/operations.md): a request a node cannot take — connection refused, or a 502/503 to an
idempotent request — goes to the next node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.server import free_port
from tests.support.services import unavailable


def nginx_binary() -> str | None:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    return found


def config(root: Path, port: int, upstreams: list[int]) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
  log_format upstreams '$status $request_method "$upstream_status" "$upstream_addr"';
  access_log {root}/access.log upstreams;
  client_body_temp_path {root}/client_body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  client_max_body_size 0;
  upstream dockyard {{
{servers}
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://dockyard;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_timeout 60s;
      proxy_connect_timeout 5s;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
      proxy_buffering off;
    }}
  }}
}}
"""


@dataclass
class Nginx:
    root: Path
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            unavailable("nginx is not installed (apt-get install nginx-light)")
            raise AssertionError("unreachable")
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(config(self.root, self.port, self.upstreams))
        log = open(self.root / "stderr.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [binary, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not answer in {timeout}s:\n{self.log()}")

    def answers(self) -> list[tuple[int, str, str]]:
        """(status to the client, method, the upstream statuses: ``"502, 201"`` after a retry)."""
        path = self.root / "access.log"
        found = []
        for line in path.read_text().splitlines() if path.exists() else []:
            status, method, upstream = line.split(" ", 2)
            found.append((int(status), method, upstream.split('" "')[0].strip('"')))
        return found

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace")[-4000:]
            for path in (self.root / "stderr.log", self.root / "error.log")
            if path.exists()
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
