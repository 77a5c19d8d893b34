"""Registries of many small images written straight into their stores, for the scale benches.

dockyard: rows through the metadata schema (one transaction per table chunk) and files in the
blob directory, exactly what pushes over HTTP leave behind. CNCF Distribution: its filesystem
layout (blobs, layer links, manifest revisions, tag links). Each image is a tiny config, a
200-byte layer and the manifest; every other one keeps its tag, the rest are untagged, and
everything is dated ``age`` seconds back so a collection's grace period has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str | None  # None: untagged
    config: bytes
    layer: bytes
    manifest: bytes

    @property
    def blobs(self) -> tuple[bytes, bytes]:
        return self.config, self.layer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def images(manifests: int, per_repository: int, seed: int = 0) -> Iterator[Image]:
    """``manifests`` images in repositories of ``per_repository``; odd ones untagged."""
    for i in range(manifests):
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed, "i": i}).encode()
        layer = hashlib.sha512(f"{seed}/{i}".encode()).digest() * 3 + b"\0" * 8  # 200 bytes
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{sha(config)}", "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{sha(layer)}", "size": len(layer)}],
        }
        yield Image(
            repository=f"scale/r{i // per_repository:05d}",
            tag=None if i % 2 else f"t{i}",
            config=config,
            layer=layer,
            manifest=json.dumps(doc, separators=(",", ":")).encode(),
        )


def _write(path: Path, data: bytes, when: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when, when))


def populate_dockyard(data_dir: Path, items: list[Image], age: float = 3600.0) -> None:
    """The metadata rows and blob files ``items`` leave in a dockyard data directory."""
    from dockyard.metadata.store import SqlMetadataStore

    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlMetadataStore(f"sqlite+aiosqlite:///{data_dir / 'metadata.db'}")
    asyncio.run(_migrate(store))
    when = time.time() - age
    blobs_dir = data_dir / "blobs" / "sha256"
    for image in items:
        for data in (*image.blobs, image.manifest):
            h = sha(data)
            _write(blobs_dir / h[:2] / h, data, when)
    db = sqlite3.connect(data_dir / "metadata.db")
    with db:
        db.executemany(
            "INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?, ?)",
            sorted({(i.repository, when) for i in items}),
        )
        db.executemany(
            "INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)",
            [(f"sha256:{sha(b)}", len(b), when) for i in items for b in i.blobs],
        )
        db.executemany(
            "INSERT OR IGNORE INTO repository_blobs (repository, digest, created_at) VALUES (?, ?, ?)",
            [(i.repository, f"sha256:{sha(b)}", when) for i in items for b in i.blobs],
        )
        db.executemany(
            "INSERT INTO manifests (repository, digest, media_type, size, created_at) VALUES (?, ?, ?, ?, ?)",
            [(i.repository, f"sha256:{sha(i.manifest)}", OCI_MANIFEST, len(i.manifest), when) for i in items],
        )
        db.executemany(
            "INSERT INTO manifest_refs (repository, manifest, digest, kind) VALUES (?, ?, ?, 'blob')",
            [(i.repository, f"sha256:{sha(i.manifest)}", f"sha256:{sha(b)}") for i in items for b in i.blobs],
        )
        db.executemany(
            "INSERT INTO tags (repository, name, digest, updated_at) VALUES (?, ?, ?, ?)",
            [(i.repository, i.tag, f"sha256:{sha(i.manifest)}", when) for i in items if i.tag],
        )
    db.close()


def populate_tags(data_dir: Path, repositories: int, tags_per_repository: int, age: float = 3600.0) -> int:
    """``repositories`` repositories of one image each (its own config, layer and manifest) under
    ``tags_per_repository`` tags, as rows of the schema and blob files; returns the tag count."""
    items = [
        Image(f"meta/r{n:06d}", None, i.config, i.layer, i.manifest)
        for n, i in enumerate(images(repositories, 1, seed=12))
    ]
    populate_dockyard(data_dir, items, age)
    when = time.time() - age
    db = sqlite3.connect(data_dir / "metadata.db")
    with db:
        db.executemany(
            "INSERT INTO tags (repository, name, digest, updated_at) VALUES (?, ?, ?, ?)",
            (
                (i.repository, f"v{t}", f"sha256:{sha(i.manifest)}", when)
                for i in items
                for t in range(tags_per_repository)
            ),
        )
    db.close()
    return repositories * tags_per_repository


async def _migrate(store: object) -> None:
    await store.open()  # type: ignore[attr-defined]
    await store.close()  # type: ignore[attr-defined]


def populate_distribution(root: Path, items: list[Image]) -> None:
    """The same images in Distribution's filesystem layout (``rootdirectory``)."""
    v2 = root / "docker" / "registry" / "v2"
    now = time.time()
    for image in items:
        repo = v2 / "repositories" / image.repository
        for data in (*image.blobs, image.manifest):
            h = sha(data)
            _write(v2 / "blobs" / "sha256" / h[:2] / h / "data", data, now)
        for data in image.blobs:
            h = sha(data)
            _write(repo / "_layers" / "sha256" / h / "link", f"sha256:{h}".encode(), now)
        m = sha(image.manifest)
        _write(repo / "_manifests" / "revisions" / "sha256" / m / "link", f"sha256:{m}".encode(), now)
        if image.tag:
            tag = repo / "_manifests" / "tags" / image.tag
            _write(tag / "current" / "link", f"sha256:{m}".encode(), now)
            _write(tag / "index" / "sha256" / m / "link", f"sha256:{m}".encode(), now)


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))
