"""OCI image layouts on disk (image-spec image-layout.md): read one to push, write one on pull."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dockyard.client.content import OCI_INDEX, Descriptor, Manifest, digest_of

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"


class LayoutError(Exception):
    pass


class OciLayout:
    """An OCI layout directory: ``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- reading --------------------------------------------------------------------------------

    def check(self) -> None:
        if not (self.path / "oci-layout").is_file() or not (self.path / "index.json").is_file():
            raise LayoutError(f"{self.path} is not an OCI layout (no oci-layout or index.json)")

    def index(self) -> dict[str, Any]:
        doc = json.loads((self.path / "index.json").read_text())
        if not isinstance(doc, dict):
            raise LayoutError(f"{self.path}/index.json is not a JSON object")
        return doc

    def resolve(self, ref: str | None) -> Descriptor:
        """The manifest ``ref`` names: a tag (``ref.name``), a digest, or (None) the only one."""
        self.check()
        entries = [Descriptor.from_json(m) for m in self.index().get("manifests") or []]
        if ref is None:
            if len(entries) == 1:
                return entries[0]
            tagged = [e for e in entries if e.raw.get("annotations", {}).get(REF_NAME) == "latest"]
            if len(tagged) == 1:
                return tagged[0]
            names = sorted(str(e.raw.get("annotations", {}).get(REF_NAME, e.digest)) for e in entries)
            raise LayoutError(f"{self.path} holds {len(entries)} manifests; say which: {', '.join(names)}")
        for entry in entries:
            if ref in (entry.digest, entry.raw.get("annotations", {}).get(REF_NAME)):
                return entry
        if ":" in ref and self.blob_path(ref).is_file():
            data = self.blob_path(ref).read_bytes()
            return Manifest.parse(data).descriptor()
        raise LayoutError(f"{self.path} has no manifest {ref!r}")

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        if not algorithm.isalnum() or not encoded.isalnum():
            raise LayoutError(f"invalid digest {digest!r}")
        return self.path / "blobs" / algorithm / encoded

    def partial_path(self, digest: str) -> Path:
        path = self.blob_path(digest)
        return path.with_name(path.name + ".partial")

    def has_blob(self, digest: str, size: int) -> bool:
        try:
            return self.blob_path(digest).stat().st_size == size
        except OSError:
            return False

    def read_manifest(self, descriptor: Descriptor) -> Manifest:
        data = self.blob_path(descriptor.digest).read_bytes()
        if digest_of(data, descriptor.digest.partition(":")[0]) != descriptor.digest:
            raise LayoutError(f"{self.blob_path(descriptor.digest)} does not hash to its name")
        return Manifest.parse(data, descriptor.media_type)

    # -- writing --------------------------------------------------------------------------------

    def init(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.path / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (self.path / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    def write_blob(self, digest: str, data: bytes) -> None:
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def tag(self, descriptor: Descriptor, name: str | None) -> None:
        """Record ``descriptor`` in ``index.json`` (under ``ref.name`` = ``name`` when given)."""
        index = self.index()
        entry: dict[str, Any] = {
            "mediaType": descriptor.media_type,
            "digest": descriptor.digest,
            "size": descriptor.size,
        }
        manifests = list(index.get("manifests") or [])
        if name:
            entry["annotations"] = {REF_NAME: name}
            manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) != name]
        elif any(m.get("digest") == descriptor.digest for m in manifests):
            return
        manifests.append(entry)
        index["manifests"] = manifests
        self._write_index(index)

    def _write_index(self, index: dict[str, Any]) -> None:
        tmp = self.path / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, self.path / "index.json")


def split_layout_argument(text: str) -> tuple[Path, str | None]:
    """``DIR``, ``DIR:TAG`` or ``DIR@DIGEST`` (a directory that exists with the colon wins)."""
    if "@" in text:
        path, _, digest = text.rpartition("@")
        if ":" in digest:
            return Path(path), digest
    if Path(text).is_dir():
        return Path(text), None
    path, sep, ref = text.rpartition(":")
    if sep and path and "/" not in ref:
        return Path(path), ref
    return Path(text), None
