"""Push an image from an OCI layout: blobs (resumably), then manifests, children before parents."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from dockyard.client.content import Descriptor, Manifest, blob_label
from dockyard.client.layout import OciLayout
from dockyard.client.progress import Progress
from dockyard.client.reference import ImageReference
from dockyard.client.registry import Registry, RegistryError, repository_scope
from dockyard.client.state import STATE_FILE, ResumeState
from dockyard.client.tasks import run_all
from dockyard.client.upload import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SINGLE_POST_MAX,
    BlobUploader,
    FileSource,
    UploadResult,
)


@dataclass
class PushReport:
    manifest: Descriptor
    results: list[UploadResult] = field(default_factory=list)
    manifests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.manifest.digest,
            "mediaType": self.manifest.media_type,
            "manifests": self.manifests,
            "blobs": {
                r.digest: {"size": r.size, "how": r.how, "sent": r.sent, "faults": r.faults}
                for r in self.results
            },
            "bytes_sent": sum(r.sent for r in self.results),
            "faults_recovered": sum(r.faults for r in self.results),
        }


async def put_manifest(registry: Registry, repository: str, reference: str, manifest: Manifest) -> str:
    """``PUT`` a manifest (its exact bytes); returns the digest the registry reports."""
    url = registry.url(f"/v2/{repository}/manifests/{reference}")
    answer = await registry.retrying(
        "PUT manifest",
        lambda: registry.call(
            "PUT",
            url,
            scopes=[repository_scope(repository, "pull", "push")],
            headers={"Content-Type": manifest.media_type},
            body=manifest.data,
            ok=(201,),
        ),
    )
    return answer.header("Docker-Content-Digest") or manifest.digest


def collect(layout: OciLayout, root: Descriptor) -> tuple[list[Manifest], list[Descriptor]]:
    """The manifests under ``root`` (children first, root last) and the blobs they name, once each."""
    manifests: list[Manifest] = []
    blobs: dict[str, Descriptor] = {}
    seen: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.digest in seen:
            return
        seen.add(descriptor.digest)
        manifest = layout.read_manifest(descriptor)
        for child in manifest.children:
            walk(child)
        for blob in manifest.blobs:
            blobs.setdefault(blob.digest, blob)
        manifests.append(manifest)

    walk(root)
    return manifests, list(blobs.values())


async def push_image(
    layout: OciLayout,
    ref: str | None,
    destination: ImageReference,
    registry: Registry,
    *,
    progress: Progress,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    single_post_max: int = DEFAULT_SINGLE_POST_MAX,
    jobs: int = 3,
    direct: bool = True,
    resume: bool = True,
) -> PushReport:
    """Push the manifest ``ref`` names in ``layout`` (with all it refers to) to ``destination``."""
    root = layout.resolve(ref)
    manifests, blobs = collect(layout, root)
    for blob in blobs:
        if not layout.has_blob(blob.digest, blob.size):
            raise RegistryError(
                0, f"the layout lacks blob {blob.digest} ({blob.size} bytes)", str(layout.path)
            )
    state = ResumeState(layout.path / STATE_FILE if resume else None)
    uploader = BlobUploader(
        registry,
        destination.repository,
        chunk_size=chunk_size,
        single_post_max=single_post_max,
        state=state,
        progress=progress,
        direct=direct,
        jobs=jobs,
    )
    report = PushReport(root)
    semaphore = asyncio.Semaphore(jobs)

    async def one(blob: Descriptor) -> None:
        async with semaphore:
            label = blob_label(blob)
            source = FileSource(layout.blob_path(blob.digest), blob.size)
            report.results.append(await uploader.upload(blob.digest, source, label))

    await run_all(one(blob) for blob in blobs)
    for manifest in manifests[:-1]:
        await put_manifest(registry, destination.repository, manifest.digest, manifest)
        report.manifests += 1
    top = manifests[-1]
    await put_manifest(registry, destination.repository, destination.tag or top.digest, top)
    report.manifests += 1
    if destination.digest and destination.digest != top.digest:
        raise RegistryError(0, f"pushed {top.digest}, not the {destination.digest} the destination names")
    return report
