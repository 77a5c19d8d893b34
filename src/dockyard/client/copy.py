"""Copy an image between repositories or registries: every platform of an index, referrers too.

Within one registry a blob is mounted (``?mount=&from=``), never downloaded; across registries it
streams from a ranged ``GET`` on the source into the destination's upload session, chunk by chunk,
so a fault on either side costs at most the chunk in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.client.content import Descriptor, Manifest, blob_label
from dockyard.client.progress import Progress
from dockyard.client.pull import get_manifest, list_referrers
from dockyard.client.push import put_manifest
from dockyard.client.reference import ImageReference
from dockyard.client.registry import Registry, RegistryError
from dockyard.client.state import ResumeState
from dockyard.client.tasks import run_all
from dockyard.client.upload import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SINGLE_POST_MAX,
    BlobUploader,
    RegistryBlobSource,
    UploadResult,
)


@dataclass
class CopyReport:
    manifest: Descriptor
    manifests: list[str] = field(default_factory=list)
    referrers: list[str] = field(default_factory=list)
    results: list[UploadResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        hows: dict[str, int] = {}
        for r in self.results:
            hows[r.how] = hows.get(r.how, 0) + 1
        return {
            "digest": self.manifest.digest,
            "mediaType": self.manifest.media_type,
            "manifests": len(self.manifests),
            "referrers": self.referrers,
            "blobs": hows,
            "bytes_sent": sum(r.sent for r in self.results),
            "faults_recovered": sum(r.faults for r in self.results),
        }


async def copy_image(
    source: ImageReference,
    destination: ImageReference,
    src: Registry,
    dst: Registry,
    *,
    progress: Progress,
    referrers: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    single_post_max: int = DEFAULT_SINGLE_POST_MAX,
    jobs: int = 3,
    direct: bool = True,
    state_file: Path | None = None,
) -> CopyReport:
    same_registry = src.base == dst.base
    uploader = BlobUploader(
        dst,
        destination.repository,
        chunk_size=chunk_size,
        single_post_max=single_post_max,
        state=ResumeState(state_file),
        progress=progress,
        direct=direct,
        jobs=jobs,
    )
    root = await get_manifest(src, source.repository, source.reference)
    report = CopyReport(root.descriptor())
    semaphore = asyncio.Semaphore(jobs)
    blobs_done: dict[str, asyncio.Task[UploadResult]] = {}
    manifests_done: set[str] = set()

    async def upload_blob(descriptor: Descriptor) -> UploadResult:
        async with semaphore:
            blob_source = RegistryBlobSource(src, source.repository, descriptor.digest, descriptor.size)
            label = blob_label(descriptor)
            result = await uploader.upload(
                descriptor.digest,
                blob_source,
                label,
                mount_from=source.repository
                if same_registry and source.repository != destination.repository
                else None,
            )
            report.results.append(result)
            return result

    def blob(descriptor: Descriptor) -> asyncio.Task[UploadResult]:
        if descriptor.digest not in blobs_done:
            blobs_done[descriptor.digest] = asyncio.ensure_future(upload_blob(descriptor))
        return blobs_done[descriptor.digest]

    async def copy_manifest(manifest: Manifest, reference: str | None) -> None:
        """Blobs and children first, then the manifest itself (by digest, or ``reference``)."""
        children = [await get_manifest(src, source.repository, c.digest) for c in manifest.children]
        await run_all(
            [*(_await(blob(d)) for d in manifest.blobs), *(copy_manifest(c, None) for c in children)]
        )
        if manifest.digest not in manifests_done or reference is not None:
            await put_manifest(dst, destination.repository, reference or manifest.digest, manifest)
            manifests_done.add(manifest.digest)
            report.manifests.append(manifest.digest)
            progress.line(f"manifest {manifest.digest[:19]}: copied")

    async def copy_referrers(subject: str, depth: int = 0) -> None:
        if depth > 8:
            return
        for descriptor in await list_referrers(src, source.repository, subject):
            if descriptor.digest in manifests_done:
                continue
            manifest = await get_manifest(src, source.repository, descriptor.digest)
            await copy_manifest(manifest, None)
            report.referrers.append(descriptor.digest)
            await copy_referrers(descriptor.digest, depth + 1)

    try:
        await copy_manifest(root, destination.tag or (None if destination.digest else source.tag))
        if referrers:
            subjects = [root.digest, *(c.digest for c in root.children)]
            for subject in subjects:
                await copy_referrers(subject)
    finally:
        for task in blobs_done.values():
            task.cancel()
    if destination.digest and destination.digest != root.digest:
        raise RegistryError(0, f"copied {root.digest}, not the {destination.digest} the destination names")
    return report


async def _await(task: asyncio.Task[UploadResult]) -> None:
    await task
