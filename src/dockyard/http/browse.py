"""Pages for people: what the registry stores, browsable in any browser (docs/browsing.md).

Server-rendered HTML with inline CSS and no scripts. The pages ask the core what the API asks
it, under the same access rules (the app's route table), and render the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

from dockyard.http import auth
from dockyard.http.common import registry, repository
from dockyard.http.errors import Handler
from dockyard.http.html import Html, annotation_list, definitions, el, esc, join, link, page, size, table, url
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.manifests import Descriptor, ParsedManifest, parse_manifest
from dockyard.registry.names import Reference
from dockyard.registry.ports import ManifestRecord

REPOSITORIES_PER_PAGE = 100
TAGS_PER_PAGE = 50
MOST_TAGS_PER_PAGE = 500  # each tag's manifest is read to show its size or platforms
MOST_TAGS_OF_MANIFEST = 100

_IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Access denied",
    404: "Not found",
    429: "Too many requests",
}


def repository_url(name: str, **query: str | int) -> str:
    return url("/ui/r", name, **query)


def manifest_url(name: str, reference: str | Digest) -> str:
    return url("/ui/r", name, "manifests", str(reference))


def blob_url(name: str, digest: Digest) -> str:
    return url("/v2", name, "blobs", str(digest))


def _page_size(request: web.Request, default: int, most: int) -> int:
    n = request.query.get("n")
    return default if not n else min(registry(request).page_size(n), most)


def _next_page(href: str) -> Html:
    return el("nav", link(href, "next page", rel="next"), class_="pages")


def _parse(record: ManifestRecord, data: bytes) -> ParsedManifest | None:
    """The manifest's structure; None if today's rules no longer read what was once accepted."""
    try:
        return parse_manifest(data, record.media_type)
    except errors.RegistryError:
        return None


# -- handlers --------------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    """``/``: the repository list."""
    return web.Response(status=302, headers={"Location": "/ui/"})


async def list_repositories(request: web.Request) -> web.Response:
    """The catalog, filtered the catalog's way: only repositories the client may pull."""
    limit = _page_size(request, REPOSITORIES_PER_PAGE, REPOSITORIES_PER_PAGE * 10)
    names, more = await registry(request).list_repositories(
        limit, request.query.get("last") or None, auth.readable(request)
    )
    body: list[object] = [
        table(["Repository"], [[link(repository_url(n), n)] for n in names])
        if names
        else el("p", "No repositories.", class_="muted")
    ]
    if more and names:
        body.append(_next_page(url("/ui/", n=limit, last=names[-1])))
    return page("Repositories", *body)


async def show_repository(request: web.Request) -> web.Response:
    """A repository's tags, each with its manifest's digest, type, and size or platforms."""
    name = repository(request)
    core = registry(request)
    limit = _page_size(request, TAGS_PER_PAGE, MOST_TAGS_PER_PAGE)
    tags, more = await core.list_tags(name, limit, request.query.get("last") or None)
    rows = []
    for tag in tags:
        try:
            record, data = await core.get_manifest(name, Reference(tag=tag))
        except errors.RegistryError as exc:
            if exc.error is errors.MANIFEST_UNKNOWN:
                continue  # deleted since the list was read
            raise
        rows.append(
            [
                link(manifest_url(name, tag), tag),
                link(manifest_url(name, record.digest), record.digest, class_="digest"),
                _media_type(record),
                _contents(name, record, _parse(record, data)),
            ]
        )
    body: list[object] = [
        el("h2", "Tags"),
        table(["Tag", "Digest", "Media type", "Size or platforms"], rows)
        if rows
        else el("p", "No tags.", class_="muted"),
    ]
    if more and tags:
        body.append(_next_page(repository_url(name, n=limit, last=tags[-1])))
    return page(name, *body, crumbs=[(name, repository_url(name))])


async def show_manifest(request: web.Request) -> web.Response:
    """One manifest: what it says, what refers to it, and its JSON."""
    name = repository(request)
    reference = Reference.parse(request.match_info["reference"])
    core = registry(request)
    record, data = await core.get_manifest(name, reference)
    parsed = _parse(record, data)
    tags, more_tags = await core.tags_of_manifest(name, record.digest, MOST_TAGS_OF_MANIFEST)
    referrers = await core.list_referrers(name, record.digest, None)
    body: list[object] = [
        definitions(
            [
                ("Digest", el("span", record.digest, class_="digest")),
                ("Media type", record.media_type),
                ("artifactType", record.artifact_type),
                ("Size", size(record.size)),
                ("Tags", _tag_links(name, tags, more_tags)),
                ("Subject", _subject(name, record.subject)),
                ("Annotations", annotation_list(record.annotations) if record.annotations else None),
                ("Raw", link(url("/v2", name, "manifests", str(record.digest)), "manifest bytes")),
            ]
        )
    ]
    if parsed is not None and parsed.children:
        body += [el("h2", "Manifests"), _children(name, parsed.children)]
    if parsed is not None and parsed.blobs:
        config, *layers = parsed.blobs
        total = sum(d.size for d in parsed.blobs)
        body += [el("h2", "Config"), _blobs(name, [config])]
        body += [
            el("h2", "Layers (", len(layers), ", ", size(total), " with the config)"),
            _blobs(name, layers),
        ]
    body += [el("h2", "Referrers"), _referrers(name, referrers)]
    body += [el("h2", "JSON"), el("pre", _pretty(data))]
    title = f"{name}@{record.digest}" if reference.tag is None else f"{name}:{reference.tag}"
    crumbs = [(name, repository_url(name)), (str(reference), manifest_url(name, str(reference)))]
    return page(title, *body, crumbs=crumbs)


async def not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


# -- parts of pages ------------------------------------------------------------------------------


def _media_type(record: ManifestRecord) -> Html:
    """The media type, and the artifactType when it says more than "an image"."""
    if record.artifact_type and record.artifact_type not in _IMAGE_CONFIG_TYPES:
        return join(
            [record.media_type, el("br"), el("span", "artifactType ", record.artifact_type, class_="muted")]
        )
    return esc(record.media_type)


def _contents(name: str, record: ManifestRecord, parsed: ParsedManifest | None) -> Html:
    """An image's size (config and layers); an index's platforms, each linked to its manifest."""
    if parsed is None:
        return el("span", size(record.size), " (manifest)", class_="muted")
    if parsed.children:
        return el(
            "ul",
            *(
                el("li", _platform(d), " ", link(manifest_url(name, d.digest), d.digest, class_="digest"))
                for d in parsed.children
            ),
            class_="plain",
        )
    return size(sum(d.size for d in parsed.blobs))


def _platform(d: Descriptor) -> Html:
    if d.platform is not None:
        return el("strong", str(d.platform))
    return el("span", d.artifact_type or "no platform", class_="muted")


def _tag_links(name: str, tags: Sequence[str], more: bool) -> Html | None:
    if not tags:
        return None
    links = join([link(manifest_url(name, t), t) for t in tags], ", ")
    return join([links, el("span", ", and more", class_="muted")]) if more else links


def _subject(name: str, subject: Digest | None) -> Html | None:
    return None if subject is None else link(manifest_url(name, subject), subject, class_="digest")


def _children(name: str, children: Sequence[Descriptor]) -> Html:
    return table(
        ["Platform", "Digest", "Media type", "Size", "Annotations"],
        [
            [
                _platform(d),
                link(manifest_url(name, d.digest), d.digest, class_="digest"),
                d.media_type,
                size(d.size),
                annotation_list(d.annotations),
            ]
            for d in children
        ],
    )


def _blobs(name: str, blobs: Sequence[Descriptor]) -> Html:
    if not blobs:
        return el("p", "None.", class_="muted")
    return table(
        ["Digest", "Media type", "Size", "Annotations"],
        [
            [
                link(blob_url(name, d.digest), d.digest, class_="digest"),
                d.media_type,
                size(d.size),
                annotation_list(d.annotations),
            ]
            for d in blobs
        ],
    )


def _referrers(name: str, referrers: Sequence[ManifestRecord]) -> Html:
    if not referrers:
        return el("p", "None.", class_="muted")
    return table(
        ["artifactType", "Digest", "Media type", "Size", "Annotations"],
        [
            [
                r.artifact_type or "",
                link(manifest_url(name, r.digest), r.digest, class_="digest"),
                r.media_type,
                size(r.size),
                annotation_list(r.annotations),
            ]
            for r in referrers
        ],
    )


def _pretty(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        return data.decode("utf-8", errors="replace")


# -- errors as pages ---------------------------------------------------------------------------------


def error_page(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return page(_TITLES.get(status, f"Error {status}"), el("p", message), status=status, headers=headers)


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the pages' routes, an error (access control's included) is a page, not the API's JSON;
    its status and headers (``WWW-Authenticate``, ``Retry-After``) stay what they were."""
    if request.match_info.route not in request.app[auth.BROWSER_ROUTES]:
        return await handler(request)
    try:
        return await handler(request)
    except errors.RegistryError as exc:
        return error_page(exc.status, exc.message or exc.error.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_page(exc.status, "There is no such page." if exc.status == 404 else exc.reason)
