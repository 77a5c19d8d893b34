"""Pull an image (every platform of an index) into an OCI layout, resumably.

A blob is downloaded into ``blobs/<alg>/<hex>.partial``; after a dropped connection, a timeout or
a ``5xx`` — or when the command runs again — the download goes on with ``Range: bytes=<have>-``.
The digest is verified before the file takes its final name; manifests are written after the
blobs they name, and ``index.json`` last, so the layout never names what it does not hold.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from dockyard.client.content import (
    ACCEPT,
    OCI_INDEX,
    Descriptor,
    Manifest,
    blob_label,
    choose_platform,
    digest_of,
    new_hasher,
)
from dockyard.client.layout import OciLayout
from dockyard.client.progress import Progress
from dockyard.client.reference import ImageReference
from dockyard.client.registry import (
    FAULTS,
    Registry,
    RegistryError,
    backoff_delay,
    error_from,
    repository_scope,
)
from dockyard.client.tasks import run_all

_READ_SIZE = 1024 * 1024


@dataclass
class PullReport:
    manifest: Descriptor
    manifests: int = 0
    blobs: int = 0
    bytes_downloaded: int = 0
    skipped: int = 0
    faults: int = 0
    digests: list[str] = field(default_factory=list)
    platform: str | None = None
    referrers: list[str] = field(default_factory=list)


async def get_manifest(registry: Registry, repository: str, reference: str) -> Manifest:
    """A manifest's exact bytes; checked against the digest asked for or the one the registry says."""
    url = registry.url(f"/v2/{repository}/manifests/{reference}")
    answer = await registry.retrying(
        "GET manifest",
        lambda: registry.call(
            "GET", url, scopes=[repository_scope(repository, "pull")], headers={"Accept": ACCEPT}, ok=(200,)
        ),
    )
    expected = reference if ":" in reference else answer.header("Docker-Content-Digest")
    if expected and ":" in expected:
        actual = digest_of(answer.body, expected.partition(":")[0])
        if actual != expected:
            raise RegistryError(200, f"manifest bytes hash to {actual}, not {expected}", str(url))
    return Manifest.parse(answer.body, answer.header("Content-Type"))


async def list_referrers(registry: Registry, repository: str, digest: str) -> list[Descriptor]:
    """The referrers of ``digest``: the referrers API, or the tag schema (``sha256-<hex>``) without it."""
    scopes = [repository_scope(repository, "pull")]
    url = registry.url(f"/v2/{repository}/referrers/{digest}")
    answer = await registry.retrying(
        "referrers",
        lambda: registry.call("GET", url, scopes=scopes, headers={"Accept": OCI_INDEX}, ok=(200, 404)),
    )
    if answer.status == 200:
        try:
            return [Descriptor.from_json(m) for m in answer.json().get("manifests") or []]
        except (ValueError, AttributeError):
            pass
    fallback = digest.replace(":", "-")
    tag_url = registry.url(f"/v2/{repository}/manifests/{fallback}")
    found = await registry.retrying(
        "referrers tag",
        lambda: registry.call("HEAD", tag_url, scopes=scopes, headers={"Accept": OCI_INDEX}, ok=(200, 404)),
    )
    if found.status != 200:
        return []
    index = await get_manifest(registry, repository, fallback)
    return index.children


async def download_blob(
    registry: Registry,
    repository: str,
    descriptor: Descriptor,
    layout: OciLayout,
    progress: Progress,
    report: PullReport | None = None,
) -> None:
    """Fetch one blob into the layout, resuming a ``.partial`` file, verifying the digest."""
    digest, size = descriptor.digest, descriptor.size
    if layout.has_blob(digest, size):
        if report is not None:
            report.skipped += 1
        return
    final, partial = layout.blob_path(digest), layout.partial_path(digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > size:
        offset = 0
    hasher = new_hasher(digest)
    if offset:
        with open(partial, "rb") as f:
            while data := f.read(_READ_SIZE):
                hasher.update(data)
    url = registry.url(f"/v2/{repository}/blobs/{digest}")
    scopes = [repository_scope(repository, "pull")]
    progress.start(digest, blob_label(descriptor), size, offset)
    failures = 0
    verified_restart = False
    while True:
        before = offset
        try:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            if offset < size:
                async with registry.open(
                    "GET", url, scopes=scopes, headers=headers, follow_redirects=True
                ) as response:
                    if response.status == 200 and offset:
                        offset, hasher = 0, new_hasher(digest)  # the registry ignored Range: from the start
                    elif response.status == 206:
                        start = _content_range_start(response.headers.get("Content-Range"))
                        if start != offset:
                            raise RegistryError(206, f"asked for bytes from {offset}, got them from {start}")
                    elif response.status != 200:
                        error = error_from(response.status, await response.read(), str(url))
                        raise error
                    with open(partial, "r+b" if offset else "wb") as f:
                        f.seek(offset)
                        f.truncate()
                        async for data in response.content.iter_chunked(_READ_SIZE):
                            f.write(data)
                            hasher.update(data)
                            offset += len(data)
                            if report is not None:
                                report.bytes_downloaded += len(data)
                            progress.update(digest, offset)
                        f.flush()
                        os.fsync(f.fileno())
                if offset < size:
                    raise ConnectionError(f"the blob ended at {offset} of {size} bytes")
            elif not partial.exists():
                partial.write_bytes(b"")
        except FAULTS as exc:
            if isinstance(exc, RegistryError) and exc.status < 500 and exc.status not in (408, 429):
                raise
            failures = 0 if offset > before else failures + 1
            if report is not None:
                report.faults += 1
            if failures > registry.options.retries:
                raise
            progress.note(digest, f"{type(exc).__name__} at {offset}; resuming")
            options = registry.options
            await asyncio.sleep(backoff_delay(max(1, failures), options.backoff_base, options.backoff_max))
            continue
        if offset > size or hasher.hexdigest() != digest.partition(":")[2]:
            partial.unlink(missing_ok=True)
            if verified_restart:
                raise RegistryError(200, f"the blob's bytes do not hash to {digest}", str(url))
            verified_restart = True  # a stale .partial, perhaps: once more from the start
            progress.note(digest, "digest mismatch; downloading again from the start")
            offset, hasher = 0, new_hasher(digest)
            continue
        os.replace(partial, final)
        progress.finish(digest, "pulled")
        if report is not None:
            report.blobs += 1
        return


def _content_range_start(header: str | None) -> int | None:
    if not header:
        return None
    spec = header.strip().removeprefix("bytes").strip()
    start = spec.partition("-")[0]
    return int(start) if start.isdigit() else None


async def pull_image(
    source: ImageReference,
    registry: Registry,
    layout: OciLayout,
    *,
    progress: Progress,
    jobs: int = 3,
    tag: str | None = None,
    platform: str | None = None,
    referrers: bool = False,
) -> PullReport:
    """Pull ``source`` into ``layout`` and name it ``tag`` (default: its tag).

    An index comes whole (every platform), unless ``platform`` (``os/arch[/variant]``) picks
    one of its images: then that image alone is pulled and named, as ``docker pull
    --platform`` does. A source that is not an index is pulled as it is. With ``referrers``,
    the artifacts that refer to what was pulled (signatures, SBOMs; and theirs, in turn) come
    too, listed in ``index.json`` without a name.
    """
    layout.init()
    root = await get_manifest(registry, source.repository, source.reference)
    chosen = None
    if platform is not None and root.is_index:
        chosen = choose_platform(root, platform)
        root = await get_manifest(registry, source.repository, chosen.digest)
    report = PullReport(root.descriptor(), platform=chosen.platform if chosen else None)
    semaphore = asyncio.Semaphore(jobs)
    seen: set[str] = set()

    async def blob(descriptor: Descriptor) -> None:
        async with semaphore:
            await download_blob(registry, source.repository, descriptor, layout, progress, report)

    async def walk(manifest: Manifest) -> None:
        children = []
        for child in manifest.children:
            children.append(await get_manifest(registry, source.repository, child.digest))
        blobs = [d for d in manifest.blobs if d.digest not in seen]
        seen.update(d.digest for d in blobs)
        await run_all([*(blob(d) for d in blobs), *(walk(c) for c in children)])
        layout.write_blob(manifest.digest, manifest.data)
        report.manifests += 1
        report.digests.append(manifest.digest)

    async def pull_referrers(subject: str, depth: int = 0) -> None:
        if depth > 8:
            return
        for descriptor in await list_referrers(registry, source.repository, subject):
            if descriptor.digest in report.digests:
                continue
            await walk(await get_manifest(registry, source.repository, descriptor.digest))
            layout.tag(descriptor, None)
            report.referrers.append(descriptor.digest)
            await pull_referrers(descriptor.digest, depth + 1)

    await walk(root)
    if referrers:
        for subject in [root.digest, *(c.digest for c in root.children)]:
            await pull_referrers(subject)
    layout.tag(root.descriptor(), tag or source.tag or (None if source.digest else "latest"))
    return report


def summary(report: PullReport) -> dict[str, Any]:
    return {
        "digest": report.manifest.digest,
        "mediaType": report.manifest.media_type,
        "manifests": report.manifests,
        "blobs": report.blobs,
        "blobs_already_present": report.skipped,
        "bytes_downloaded": report.bytes_downloaded,
        "faults_recovered": report.faults,
        "platform": report.platform,
        "referrers": report.referrers,
    }
