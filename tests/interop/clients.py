"""Thin drivers for the real clients the interop suite runs, and access-log helpers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.server import DockyardServer


class ClientError(AssertionError):
    """A client command failed; carries its output so the test report shows why."""


@dataclass(frozen=True)
class Skopeo:
    """Runs ``skopeo`` with an accept-anything policy, no stored credentials and plain HTTP.

    Every ``docker://`` reference in these tests points at dockyard on 127.0.0.1, which speaks
    plain HTTP, so TLS verification is off on whichever side is a registry.
    """

    binary: str
    auth_file: Path
    timeout: float = 120.0

    def env(self) -> dict[str, str]:
        return {**os.environ, "REGISTRY_AUTH_FILE": str(self.auth_file)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--insecure-policy", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, env=self.env())
        if check and result.returncode != 0:
            raise ClientError(
                f"{' '.join(cmd)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def copy(self, source: str, destination: str, *flags: str) -> subprocess.CompletedProcess[str]:
        tls = []
        if source.startswith("docker://"):
            tls.append("--src-tls-verify=false")
        if destination.startswith("docker://"):
            tls.append("--dest-tls-verify=false")
        return self.run("copy", *tls, *flags, source, destination)

    def inspect_raw(self, reference: str) -> bytes:
        """The manifest bytes exactly as the registry served them."""
        cmd = [self.binary, "--insecure-policy", "inspect", "--tls-verify=false", "--raw", reference]
        result = subprocess.run(cmd, capture_output=True, timeout=self.timeout, env=self.env())
        if result.returncode != 0:
            raise ClientError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stderr.decode()}")
        return result.stdout

    def inspect(self, reference: str, *flags: str) -> dict[str, Any]:
        """``skopeo inspect``: the manifest digest plus what the image config says."""
        out = self.run("inspect", "--tls-verify=false", *flags, reference).stdout
        return dict(json.loads(out))

    def list_tags(self, reference: str) -> list[str]:
        out = self.run("list-tags", "--tls-verify=false", reference).stdout
        return list(json.loads(out)["Tags"])

    def delete(self, reference: str) -> subprocess.CompletedProcess[str]:
        return self.run("delete", "--tls-verify=false", reference)


def access_log_lines(
    server: DockyardServer, needle: str, at_least: int = 0, timeout: float = 60.0
) -> list[str]:
    """The access-log lines of ``server`` (started with ``DOCKYARD_ACCESS_LOG=true``) holding
    ``needle``; with ``at_least``, once that many are there (a worker writes its line after the
    answer has gone out: on a busy machine the client can be done first)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log().splitlines() if "aiohttp.access" in line and needle in line]
        if len(lines) >= at_least or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)
