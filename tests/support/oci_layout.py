"""Build OCI image layouts on disk from seeded random bytes, with no network.

The layouts are what ``skopeo copy oci:DIR:TAG ...`` and oras-py's ``Layout`` read: an
``oci-layout`` file, ``index.json`` and ``blobs/sha256/<hex>``. Layers are real gzip-compressed
tars, configs are valid OCI image configs whose ``rootfs.diff_ids`` are the digests of the
uncompressed tars, so clients that check either accept them. The same seed gives the same bytes,
hence the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-01-01T00:00:00Z"

Platform = tuple[str, str]


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    """One image manifest written into a layout, with everything it references."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    platform: Platform

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """The config and layer digests: the blobs (not manifests) a registry must hold."""
        return (self.config.digest, *(layer.digest for layer in self.layers))


@dataclass(frozen=True)
class BuiltIndex:
    """A multi-platform image index written into a layout, and its per-platform children."""

    index: Descriptor
    images: tuple[BuiltImage, ...]

    @property
    def digest(self) -> str:
        return self.index.digest

    def image_for(self, os: str, architecture: str) -> BuiltImage:
        return next(image for image in self.images if image.platform == (os, architecture))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def write_blob(layout: Path, data: bytes, media_type: str) -> Descriptor:
    """Store ``data`` under ``blobs/sha256/`` and describe it."""
    digest = sha256(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Descriptor(media_type, digest, len(data))


def read_blob(layout: Path, digest: str) -> bytes:
    return blob_path(layout, digest).read_bytes()


def init_layout(layout: Path) -> None:
    """Create the ``oci-layout`` marker, an empty ``index.json`` and ``blobs/sha256``."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    if not (layout / "index.json").exists():
        (layout / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        )


def tag_in_layout(layout: Path, descriptor: Descriptor, tag: str) -> None:
    """Point ``tag`` (the ``ref.name`` annotation in ``index.json``) at ``descriptor``."""
    index_file = layout / "index.json"
    index = json.loads(index_file.read_text())
    manifests = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    manifests.append({**descriptor.to_json(), "annotations": {REF_NAME: tag}})
    index["manifests"] = manifests
    index_file.write_text(json.dumps(index, indent=2))


def resolve_tag(layout: Path, tag: str) -> Descriptor:
    """The descriptor ``index.json`` names ``tag``; KeyError if there is none."""
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return Descriptor(entry["mediaType"], entry["digest"], entry["size"])
    raise KeyError(f"tag {tag!r} not in {layout / 'index.json'}")


def layout_digests(layout: Path) -> set[str]:
    """Every digest stored under ``blobs/`` (blobs and manifests alike)."""
    return {f"{p.parent.name}:{p.name}" for p in (layout / "blobs").glob("*/*") if p.is_file()}


def _layer_tar(rng: random.Random, index: int, size: int) -> bytes:
    """An uncompressed tar holding a directory and two files of random bytes (``size`` in total)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"layer{index}")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = 1_700_000_000
        tar.addfile(directory)
        first = size // 2
        for name, length in (("a.bin", first), ("b.bin", size - first)):
            content = rng.randbytes(length)
            info = tarfile.TarInfo(f"layer{index}/{name}")
            info.size = length
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_image_blobs(
    layout: Path,
    *,
    layers: int = 3,
    layer_size: int = 64 * 1024,
    seed: int = 0,
    platform: Platform = ("linux", "amd64"),
    annotations: dict[str, str] | None = None,
) -> BuiltImage:
    """Write the layers, config and manifest of one image into ``layout/blobs``; no tag."""
    rng = random.Random(f"{seed}/{platform[0]}/{platform[1]}")
    layer_descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    for i in range(layers):
        tar_bytes = _layer_tar(rng, i, layer_size)
        diff_ids.append(sha256(tar_bytes))
        compressed = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
        layer_descriptors.append(write_blob(layout, compressed, OCI_LAYER_GZIP))

    os_name, architecture = platform
    config = {
        "created": CREATED,
        "architecture": architecture,
        "os": os_name,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"dockyard.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"dockyard test layer {i} (seed {seed})"}
            for i in range(layers)
        ],
    }
    config_descriptor = write_blob(layout, canonical_json(config), OCI_CONFIG)

    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [layer.to_json() for layer in layer_descriptors],
    }
    if annotations:
        manifest["annotations"] = annotations
    manifest_descriptor = write_blob(layout, canonical_json(manifest), OCI_MANIFEST)
    return BuiltImage(
        manifest=manifest_descriptor,
        config=config_descriptor,
        layers=tuple(layer_descriptors),
        diff_ids=tuple(diff_ids),
        platform=platform,
    )


def build_image(
    layout: Path,
    *,
    layers: int = 3,
    layer_size: int = 64 * 1024,
    seed: int = 0,
    tag: str = "latest",
    platform: Platform = ("linux", "amd64"),
) -> BuiltImage:
    """Write a single-platform image into the OCI layout at ``layout`` and tag it ``tag``."""
    init_layout(layout)
    image = write_image_blobs(layout, layers=layers, layer_size=layer_size, seed=seed, platform=platform)
    tag_in_layout(layout, image.manifest, tag)
    return image


def build_index(
    layout: Path,
    *,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64")),
    layers: int = 2,
    layer_size: int = 32 * 1024,
    seed: int = 0,
    tag: str = "latest",
) -> BuiltIndex:
    """Write a multi-platform image index (one image per platform) and tag the index ``tag``."""
    init_layout(layout)
    images = tuple(
        write_image_blobs(layout, layers=layers, layer_size=layer_size, seed=seed, platform=platform)
        for platform in platforms
    )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                **image.manifest.to_json(),
                "platform": {"os": image.platform[0], "architecture": image.platform[1]},
            }
            for image in images
        ],
    }
    index_descriptor = write_blob(layout, canonical_json(index), OCI_INDEX)
    tag_in_layout(layout, index_descriptor, tag)
    return BuiltIndex(index=index_descriptor, images=images)
