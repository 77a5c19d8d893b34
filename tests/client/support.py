"""What the client tests share: layouts with big random layers, and ways to run the commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from dockyard.cli import main
from tests.support.oci_layout import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
    init_layout,
    tag_in_layout,
    write_blob,
)

LAYER = "application/vnd.oci.image.layer.v1.tar"
PIECE = 16 * 1024 * 1024


@dataclass(frozen=True)
class BigImage:
    layout: Path
    manifest: Descriptor
    layer: Descriptor

    @property
    def layer_path(self) -> Path:
        return self.layout / "blobs" / "sha256" / self.layer.digest.partition(":")[2]


def write_random_blob(layout: Path, size: int, media_type: str = LAYER) -> Descriptor:
    """``size`` random bytes as a blob of ``layout``, written and hashed in 16 MiB pieces."""
    folder = layout / "blobs" / "sha256"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "incoming.tmp"
    hasher = hashlib.sha256()
    with open(tmp, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(PIECE, left))
            hasher.update(piece)
            f.write(piece)
            left -= len(piece)
    os.replace(tmp, folder / hasher.hexdigest())
    return Descriptor(media_type, f"sha256:{hasher.hexdigest()}", size)


def build_big_image(layout: Path, layer_size: int, tag: str = "latest", extra_layers: int = 0) -> BigImage:
    """An image whose one big layer is ``layer_size`` random bytes (plus small extra layers)."""
    init_layout(layout)
    layer = write_random_blob(layout, layer_size)
    small = [write_blob(layout, os.urandom(4096 + i), LAYER) for i in range(extra_layers)]
    config = write_blob(
        layout,
        canonical_json(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ),
        OCI_CONFIG,
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json(), *(d.to_json() for d in small)],
    }
    manifest = write_blob(layout, canonical_json(manifest_doc), OCI_MANIFEST)
    tag_in_layout(layout, manifest, tag)
    return BigImage(layout, manifest, layer)


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(PIECE):
            hasher.update(data)
    return f"sha256:{hasher.hexdigest()}"


def cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run ``dockyard ARGS`` in this process."""
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def cli_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli(*args, "--json", env=env)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def dockyard_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``dockyard ARGS`` as a child process (its output in pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dockyard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
