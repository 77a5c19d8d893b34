"""Manifests: GET/HEAD by tag or digest, PUT (with ``?tag=``), DELETE (spec: "Manifests")."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from dockyard.http.common import body_stream, registry, repository
from dockyard.registry import errors
from dockyard.registry.names import Reference
from dockyard.registry.ports import ManifestRecord


class ManifestHeaders:
    """A manifest's response headers, built once per record. The metadata store hands out the
    same record object until its data changes, so the record's identity keys its headers (the
    entry holds the record: its id cannot be reused while the entry lives)."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._by_record: dict[int, tuple[ManifestRecord, CIMultiDict[str]]] = {}

    def of(self, record: ManifestRecord) -> CIMultiDict[str]:
        entry = self._by_record.get(id(record))
        if entry is not None and entry[0] is record:
            return entry[1]
        digest = str(record.digest)
        headers = CIMultiDict(
            {
                "Content-Type": record.media_type,
                "Docker-Content-Digest": digest,
                "Content-Length": str(record.size),
                "ETag": f'"{digest}"',
            }
        )
        if len(self._by_record) >= self._limit:
            self._by_record.clear()
        self._by_record[id(record)] = (record, headers)
        return headers


MANIFEST_HEADERS = web.AppKey("manifest_headers", ManifestHeaders)


def _reference(request: web.Request) -> Reference:
    """The reference of a read or delete (one that can never exist is unknown, not invalid)."""
    return Reference.lookup(request.match_info["reference"])


async def get_manifest(request: web.Request) -> web.Response:
    name = repository(request)
    reference = _reference(request)
    core = registry(request)
    if request.method == "HEAD":
        record = await core.manifest_record(name, reference)
        body = None
    else:
        record, body = await core.get_manifest(name, reference)
    # The response gets a copy (it adds its own headers); the cached one stays as built.
    return web.Response(status=200, body=body, headers=request.app[MANIFEST_HEADERS].of(record))


async def _read_manifest_body(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise errors.RegistryError(errors.MANIFEST_TOO_LARGE, detail={"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for data in body_stream(request):
        size += len(data)
        if size > limit:
            raise errors.RegistryError(errors.MANIFEST_TOO_LARGE, detail={"limit": limit})
        chunks.append(data)
    return b"".join(chunks)


async def put_manifest(request: web.Request) -> web.Response:
    name = repository(request)
    reference = Reference.parse(request.match_info["reference"])
    core = registry(request)
    body = await _read_manifest_body(request, core.policy.manifest_max_bytes)
    pushed = await core.put_manifest(
        name, reference, body, request.headers.get("Content-Type"), request.query.getall("tag", [])
    )
    response = web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/manifests/{pushed.digest}",
            "Docker-Content-Digest": str(pushed.digest),
            "Content-Length": "0",
        },
    )
    if pushed.subject is not None:
        response.headers["OCI-Subject"] = str(pushed.subject)
    if reference.digest is not None:
        for tag in pushed.tags:
            response.headers.add("OCI-Tag", tag)
    return response


async def delete_manifest(request: web.Request) -> web.Response:
    await registry(request).delete_manifest(repository(request), _reference(request))
    return web.Response(status=202, headers={"Content-Length": "0"})


async def delete_repository(request: web.Request) -> web.Response:
    """Extension: ``DELETE /v2/_dockyard/repositories/<name>`` (tags, manifests, links; the bytes
    go at the next garbage collection)."""
    await registry(request).delete_repository(repository(request))
    return web.Response(status=202, headers={"Content-Length": "0"})
