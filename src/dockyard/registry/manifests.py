"""Manifest formats: parse, validate and describe (image-spec manifest.md and image-index.md).

Accepted: OCI image manifest, OCI image index, Docker schema 2 manifest and manifest list,
artifacts (an image manifest or index with ``artifactType``). The bytes are never rewritten:
the registry stores exactly what the client sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.ports import ManifestRecord, ManifestRef

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream", "*/*"})

# Layers a registry may not have: their bytes live elsewhere (image-spec "Non-distributable").
_NON_DISTRIBUTABLE_MARKERS = ("nondistributable", "rootfs.foreign")


def _invalid(message: str, detail: Any = None) -> errors.RegistryError:
    return errors.RegistryError(errors.MANIFEST_INVALID, message=message, detail=detail)


@dataclass(frozen=True)
class Platform:
    """What an index entry runs on (image-spec image-index.md "platform")."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, value: Any) -> Platform | None:
        """Read, never judged: a platform that is not the spec's shape is simply not reported
        (pushes are validated as before, and a registry must accept what it does not understand)."""
        if not isinstance(value, dict):
            return None
        os_, arch = value.get("os"), value.get("architecture")
        if not isinstance(os_, str) or not isinstance(arch, str):
            return None
        variant, os_version = value.get("variant"), value.get("os.version")
        return cls(
            os=os_,
            architecture=arch,
            variant=variant if isinstance(variant, str) and variant else None,
            os_version=os_version if isinstance(os_version, str) and os_version else None,
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()
    platform: Platform | None = None

    @property
    def non_distributable(self) -> bool:
        return any(marker in self.media_type for marker in _NON_DISTRIBUTABLE_MARKERS)

    @classmethod
    def parse(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise _invalid(f"{where} must be a descriptor object")
        media_type = value.get("mediaType")
        if not isinstance(media_type, str) or not media_type or len(media_type) > 255:
            raise _invalid(f"{where}.mediaType must be a non-empty string")
        digest_text = value.get("digest")
        if not isinstance(digest_text, str):
            raise _invalid(f"{where}.digest must be a string")
        try:
            digest = Digest.parse(digest_text)
        except errors.RegistryError as exc:
            raise _invalid(f"{where}.digest: {exc}") from None
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _invalid(f"{where}.size must be a non-negative integer")
        artifact_type = value.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise _invalid(f"{where}.artifactType must be a string")
        urls = value.get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise _invalid(f"{where}.urls must be a list of strings")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            artifact_type=artifact_type,
            annotations=_annotations(value.get("annotations"), where),
            urls=tuple(urls),
            platform=Platform.parse(value.get("platform")),
        )


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where}.annotations must map strings to strings")
    return dict(value)


@dataclass
class ParsedManifest:
    """A validated manifest: what to record, and what it needs to exist first."""

    media_type: str
    artifact_type: str | None
    subject: Descriptor | None
    annotations: dict[str, str] | None
    blobs: list[Descriptor] = field(default_factory=list)  # config and layers
    children: list[Descriptor] = field(default_factory=list)  # index entries

    def record(self, digest: Digest, size: int) -> ManifestRecord:
        return ManifestRecord(
            digest=digest,
            media_type=self.media_type,
            size=size,
            artifact_type=self.artifact_type,
            subject=self.subject.digest if self.subject else None,
            annotations=self.annotations,
        )

    def refs(self, children_required: bool = True) -> list[ManifestRef]:
        seen: set[tuple[Digest, str]] = set()
        out: list[ManifestRef] = []
        for kind, descriptors in (("blob", self.blobs), ("manifest", self.children)):
            for d in descriptors:
                if (d.digest, kind) not in seen:
                    seen.add((d.digest, kind))
                    required = not d.non_distributable if kind == "blob" else children_required
                    out.append(ManifestRef(d.digest, kind, required))
        return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _invalid(f"duplicate key {key[:60]!r} in manifest JSON")
        out[key] = value
    return out


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except errors.RegistryError:
        raise
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    _check_unicode(doc)
    return doc


def _check_unicode(doc: Any) -> None:
    """JSON escapes can spell lone surrogates (``"\\ud800"``), which no UTF-8 store can hold."""
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _invalid("manifest strings must be valid Unicode (no lone surrogates)") from None
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Parse and validate a manifest pushed with ``content_type`` (spec: "Pushing Manifests")."""
    doc = _load_json(body)
    declared = doc.get("mediaType")
    if declared is not None and (not isinstance(declared, str) or not declared):
        raise _invalid("mediaType must be a non-empty string")
    header = _base_type(content_type)
    if declared in DOCKER_SCHEMA1 or header in DOCKER_SCHEMA1:
        raise _invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if declared and header not in GENERIC_CONTENT_TYPES and header != declared:
        raise _invalid(f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}")
    media_type = declared or (header if header not in GENERIC_CONTENT_TYPES else "")
    if not media_type:
        # No declared type: tell an index from an image by its shape (image-spec allows this).
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type {media_type[:100]!r}")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:
        raise _invalid("schemaVersion must be 2")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and (not isinstance(artifact_type, str) or not artifact_type):
        raise _invalid("artifactType must be a non-empty string")
    subject = Descriptor.parse(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc.get("annotations"), "manifest")

    if media_type in IMAGE_TYPES:
        if "manifests" in doc:
            raise _invalid("an image manifest has no 'manifests' field")
        config = Descriptor.parse(doc.get("config"), "config")
        layers_value = doc.get("layers", [])
        if not isinstance(layers_value, list):
            raise _invalid("layers must be a list")
        layers = [Descriptor.parse(v, f"layers[{i}]") for i, v in enumerate(layers_value)]
        return ParsedManifest(
            media_type=media_type,
            artifact_type=artifact_type or config.media_type,
            subject=subject,
            annotations=annotations,
            blobs=[config, *layers],
        )

    if "config" in doc or "layers" in doc:
        raise _invalid("an image index has no 'config' or 'layers' field")
    children_value = doc.get("manifests")
    if not isinstance(children_value, list):
        raise _invalid("manifests must be a list")
    children = [Descriptor.parse(v, f"manifests[{i}]") for i, v in enumerate(children_value)]
    return ParsedManifest(
        media_type=media_type,
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
        children=children,
    )


def referrers_index(records: list[ManifestRecord]) -> dict[str, Any]:
    """The referrers API's response body (spec: "Listing Referrers")."""
    manifests: list[dict[str, Any]] = []
    for r in records:
        entry: dict[str, Any] = {"mediaType": r.media_type, "digest": str(r.digest), "size": r.size}
        if r.artifact_type:
            entry["artifactType"] = r.artifact_type
        if r.annotations:
            entry["annotations"] = r.annotations
        manifests.append(entry)
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
