"""The upstream registry of a pull-through cache, over HTTP: the ``Upstream`` port on the
project's own registry client (Basic and Docker token challenges, redirects, TLS options).

Every failure that is not a 404 becomes ``UpstreamUnavailable``: the core decides whether a
cached copy stands in. Requests are made once (no retries: a client is waiting) and each has a
connect and an idle timeout, so a silent upstream costs at most ``timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from dockyard.client.registry import TRANSPORT_ERRORS, Answer, ClientOptions, error_from, repository_scope
from dockyard.client.registry import Registry as RegistryClient
from dockyard.client.registry import RegistryError as ClientRegistryError
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from dockyard.registry.ports import UpstreamBlob, UpstreamManifest, UpstreamUnavailable

# Every manifest type dockyard stores, so the upstream never falls back to one it cannot.
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
_PIECE = 256 * 1024


class HttpUpstream:
    """An upstream registry at ``base_url`` (``https://registry.example``)."""

    def __init__(self, base_url: str, options: ClientOptions, manifest_max_bytes: int) -> None:
        self._client = RegistryClient(base_url, options)
        self._manifest_max_bytes = manifest_max_bytes

    async def close(self) -> None:
        await self._client.close()

    def _url(self, repository: str, path: str) -> URL:
        return self._client.url(f"/v2/{repository}/{path}")

    async def _call(
        self, method: str, url: URL, repository: str, headers: dict[str, str] | None = None
    ) -> Answer:
        """One request, its answer read whole: 200 or 404, anything else is unavailability."""
        try:
            return await self._client.call(
                method,
                url,
                scopes=[repository_scope(repository, "pull")],
                headers=headers,
                ok=(200, 404),
                follow_redirects=True,
                limit=self._manifest_max_bytes,
            )
        except TRANSPORT_ERRORS as exc:
            raise UpstreamUnavailable(_describe(exc, url)) from exc
        except ClientRegistryError as exc:
            raise UpstreamUnavailable(str(exc)) from exc

    async def resolve_manifest(self, repository: str, tag: str) -> UpstreamManifest | None:
        url = self._url(repository, f"manifests/{tag}")
        head = await self._call("HEAD", url, repository, {"Accept": ACCEPT})
        if head.status == 404:
            return None
        digest = _digest(head.header("Docker-Content-Digest"))
        if digest is not None:
            return UpstreamManifest(digest, head.header("Content-Type") or "")
        # No digest said (allowed for HEAD by some registries): GET the bytes and hash them.
        answer = await self._call("GET", url, repository, {"Accept": ACCEPT})
        if answer.status == 404:
            return None
        return UpstreamManifest(Digest.of(answer.body), answer.header("Content-Type") or "", answer.body)

    async def fetch_manifest(self, repository: str, digest: Digest) -> UpstreamManifest | None:
        answer = await self._call(
            "GET", self._url(repository, f"manifests/{digest}"), repository, {"Accept": ACCEPT}
        )
        if answer.status == 404:
            return None
        return UpstreamManifest(digest, answer.header("Content-Type") or "", answer.body)

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest) -> AsyncIterator[UpstreamBlob | None]:
        url = self._url(repository, f"blobs/{digest}")
        try:
            async with self._client.open(
                "GET", url, scopes=[repository_scope(repository, "pull")], follow_redirects=True
            ) as response:
                if response.status == 404:
                    yield None
                    return
                if response.status != 200:
                    body = await response.content.read(4096)
                    raise UpstreamUnavailable(str(error_from(response.status, body, str(url))))
                yield UpstreamBlob(response.content_length, _pieces(response, url))
        except TRANSPORT_ERRORS as exc:
            raise UpstreamUnavailable(_describe(exc, url)) from exc
        except ClientRegistryError as exc:
            raise UpstreamUnavailable(str(exc)) from exc

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        answer = await self._call("HEAD", self._url(repository, f"blobs/{digest}"), repository)
        if answer.status == 404:
            return None
        length = answer.header("Content-Length")
        if length is None or not length.isdigit():
            raise UpstreamUnavailable(f"the upstream's HEAD of blob {digest} gave no Content-Length")
        return int(length)

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool] | None:
        query = {"n": str(limit), **({"last": last} if last else {})}
        answer = await self._call("GET", self._url(repository, "tags/list").with_query(query), repository)
        if answer.status == 404:
            return None
        try:
            tags = answer.json()["tags"] or []
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamUnavailable(f"the upstream's tag list is not the spec's JSON: {exc}") from exc
        if not isinstance(tags, list):
            raise UpstreamUnavailable("the upstream's tag list is not a list")
        return [t for t in tags if isinstance(t, str)], answer.header("Link") is not None


async def _pieces(response: aiohttp.ClientResponse, url: URL) -> AsyncIterator[bytes]:
    """The body as it arrives (aiohttp pauses the socket when its small buffer is full)."""
    try:
        async for data in response.content.iter_chunked(_PIECE):
            yield data
    except TRANSPORT_ERRORS as exc:
        raise UpstreamUnavailable(f"the blob stream broke: {_describe(exc, url)}") from exc


def _digest(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return Digest.parse(text)
    except errors.RegistryError:
        return None


def _describe(exc: BaseException, url: URL) -> str:
    return f"{url.origin()}: {type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
