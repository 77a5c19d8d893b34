"""Media types and what a manifest refers to (image-spec manifest.md and image-index.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST}) | INDEX_TYPES
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
_NON_DISTRIBUTABLE = ("nondistributable", "rootfs.foreign")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_json(cls, value: Any) -> Descriptor:
        if not isinstance(value, dict):
            raise ValueError("a descriptor must be an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise ValueError(f"invalid descriptor {json.dumps(value)[:200]}")
        return cls(media_type if isinstance(media_type, str) else "", digest, size, value)

    @property
    def platform(self) -> str | None:
        """``os/architecture[/variant]`` of an index entry, when it says."""
        value = self.raw.get("platform")
        if not isinstance(value, dict):
            return None
        parts = [value.get("os"), value.get("architecture"), value.get("variant")]
        if not all(isinstance(p, str) and p for p in parts[:2]):
            return None
        return "/".join(p for p in parts if isinstance(p, str) and p)

    @property
    def non_distributable(self) -> bool:
        return any(marker in self.media_type for marker in _NON_DISTRIBUTABLE)

    @property
    def is_manifest(self) -> bool:
        return self.media_type in MANIFEST_TYPES

    def to_json(self) -> dict[str, Any]:
        return self.raw or {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes, its media type, and what it refers to."""

    data: bytes
    media_type: str
    doc: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, content_type: str | None = None) -> Manifest:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("a manifest must be a JSON object")
        declared = doc.get("mediaType")
        media_type = declared if isinstance(declared, str) and declared else (content_type or "")
        media_type = media_type.split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
        return cls(data, media_type, doc)

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def children(self) -> list[Descriptor]:
        """The manifests an index lists."""
        return [Descriptor.from_json(m) for m in self.doc.get("manifests") or []] if self.is_index else []

    @property
    def blobs(self) -> list[Descriptor]:
        """The config and layers (and blobs an index or artifact lists), distributable ones only."""
        found: list[Descriptor] = []
        if not self.is_index:
            if self.doc.get("config") is not None:
                found.append(Descriptor.from_json(self.doc["config"]))
            found += [Descriptor.from_json(layer) for layer in self.doc.get("layers") or []]
            found += [Descriptor.from_json(b) for b in self.doc.get("blobs") or []]
        return [d for d in found if not d.non_distributable]

    @property
    def subject(self) -> Descriptor | None:
        subject = self.doc.get("subject")
        return Descriptor.from_json(subject) if subject is not None else None

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))


def blob_label(descriptor: Descriptor) -> str:
    """A short name for progress lines: what the blob is and the start of its digest."""
    media_type = descriptor.media_type
    kind = (
        "manifest" if media_type in MANIFEST_TYPES
        else "config" if "config" in media_type
        else "layer" if "layer" in media_type or "rootfs" in media_type
        else "blob"
    )  # fmt: skip
    return f"{kind} {descriptor.digest.partition(':')[2][:12]}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def new_hasher(digest: str) -> Any:
    """A hashlib object for ``digest``'s algorithm."""
    return hashlib.new(digest.partition(":")[0])


def platform_matches(wanted: str, offered: str) -> bool:
    """``linux/arm64`` matches ``linux/arm64/v8``; ``linux/arm/v7`` matches only ``linux/arm/v7``."""
    want, have = wanted.split("/"), offered.split("/")
    return have[: len(want)] == want


class PlatformNotFound(LookupError):
    """The index has no image for the platform asked for."""


def choose_platform(index: Manifest, wanted: str) -> Descriptor:
    """The index entry for ``wanted`` (the first that matches); PlatformNotFound says what there is."""
    children = index.children
    for child in children:
        if child.platform is not None and platform_matches(wanted, child.platform):
            return child
    offered = ", ".join(sorted({c.platform for c in children if c.platform})) or "none declared"
    raise PlatformNotFound(f"no image for platform {wanted} in the index (it has: {offered})")


def check_platform_spec(text: str) -> str:
    """``os/architecture[/variant]``, each part non-empty; ValueError otherwise."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"platform {text!r}: expected os/architecture[/variant], e.g. linux/amd64")
    return text
