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
from dockyard.http.html import (
    Html,
    annotation_list,
    copy_field,
    definitions,
    el,
    esc,
    join,
    link,
    page,
    parse_timestamp,
    search_form,
    shell_words,
    short_digest,
    size,
    table,
    url,
    when,
)
from dockyard.registry import browsing, errors
from dockyard.registry.digests import Digest
from dockyard.registry.manifests import Descriptor, ParsedManifest, parse_manifest
from dockyard.registry.names import Reference
from dockyard.registry.ports import ManifestRecord

REPOSITORIES_PER_PAGE = 100
TAGS_PER_PAGE = 50
MOST_TAGS_PER_PAGE = 500  # each tag's manifest is read to show its size or platforms
MOST_TAGS_OF_MANIFEST = 100
MOST_SEARCH_CHARACTERS = 255
RECENT_GC_RUNS = 20
RECENT_UPLOADS = 50

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


def _offset(request: web.Request) -> int:
    value = request.query.get("from", "")
    return int(value) if value.isdigit() and len(value) < 10 else 0


def _next_page(href: str) -> Html:
    return el("nav", link(href, "next page", rel="next"), class_="pages")


def _parse(record: ManifestRecord, data: bytes) -> ParsedManifest | None:
    """The manifest's structure; None if today's rules no longer read what was once accepted."""
    try:
        return parse_manifest(data, record.media_type)
    except errors.RegistryError:
        return None


def _pull_host(request: web.Request) -> str:
    """The registry as the client reached it (the Host it sent), for ready-to-copy pull lines."""
    return request.host or "localhost"


def _pull_line(request: web.Request, name: str, reference: Reference) -> Html:
    """``docker pull HOST/NAME:TAG`` (or ``@DIGEST``), ready to copy."""
    at = f":{reference.tag}" if reference.tag is not None else f"@{reference.digest}"
    return copy_field(f"docker pull {_pull_host(request)}/{name}{at}", label="pull command")


def _sort_links(base: str, current: str, choices: Sequence[tuple[str, str]], **query: str) -> Html:
    items = []
    for key, text in choices:
        if key == current:
            items.append(el("strong", text, aria_current="true"))
        else:
            items.append(link(url(base, sort=key, **{k: v for k, v in query.items() if v}), text))
    return el("p", "Sort by ", join(items, " · "), class_="sort")


# -- handlers --------------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    """``/``: the repository list."""
    return web.Response(status=302, headers={"Location": "/ui/"})


async def list_repositories(request: web.Request) -> web.Response:
    """The catalog, filtered the catalog's way (only repositories the client may pull), with
    each repository's tags, last push and size; searchable, sorted by name or last push."""
    core = registry(request)
    limit = _page_size(request, REPOSITORIES_PER_PAGE, REPOSITORIES_PER_PAGE * 10)
    query = request.query.get("q", "").strip().lower()[:MOST_SEARCH_CHARACTERS]
    by = "pushed" if request.query.get("sort") == "pushed" else "name"
    cursor = request.query.get("from") if by == "pushed" else request.query.get("last")
    found = await browsing.repository_page(
        core, limit, cursor=cursor or None, containing=query or None, by=by, may_read=auth.readable(request)
    )
    now = core.now()
    body: list[object] = []
    if auth.may_see_totals(request):
        stats = await core.meta.statistics()
        body.append(
            el(
                "p",
                el("strong", int(stats.get("repositories", 0))),
                " repositories · ",
                el("strong", int(stats.get("manifests", 0))),
                " manifests · ",
                el("strong", size(int(stats.get("blob_bytes", 0) + stats.get("manifest_bytes", 0)))),
                " stored",
                class_="totals",
            )
        )
    body.append(search_form("/ui/", query, by))
    body.append(_sort_links("/ui/", by, [("name", "name"), ("pushed", "last push")], q=query))
    rows = [
        [
            link(repository_url(r.name), r.name),
            r.tags,
            when(r.last_push, now),
            size(r.stored_bytes, short=True),
        ]
        for r in found.repositories
    ]
    if rows:
        body.append(table(["Repository", "Tags", "Last push", "Size"], rows))
    else:
        body.append(el("p", "No repositories match." if query else "No repositories.", class_="muted"))
    if found.next_cursor is not None:
        cursor_key = "from" if by == "pushed" else "last"
        extra = {"q": query} if query else {}
        if by == "pushed":
            extra["sort"] = by
        body.append(_next_page(url("/ui/", n=limit, **{cursor_key: found.next_cursor}, **extra)))
    return page("Repositories", *body, admin_link=auth.may_operate(request))


async def show_repository(request: web.Request) -> web.Response:
    """A repository's tags (newest push first, or by name), each with its short digest, when it
    was pushed, its size or platforms, how many manifests refer to it, and a pull line."""
    name = repository(request)
    core = registry(request)
    limit = _page_size(request, TAGS_PER_PAGE, MOST_TAGS_PER_PAGE)
    by = "name" if request.query.get("sort") == "name" else "pushed"
    offset = _offset(request)
    tags, referrers, more = await browsing.tag_page(core, name, limit, offset, by)
    now = core.now()
    rows = []
    for tag in tags:
        try:
            record, data = await core.get_manifest(name, Reference(tag=tag.tag))
        except errors.RegistryError as exc:
            if exc.error is errors.MANIFEST_UNKNOWN:
                continue  # deleted since the list was read
            raise
        rows.append(
            [
                link(manifest_url(name, tag.tag), tag.tag),
                short_digest(record.digest, manifest_url(name, record.digest)),
                when(tag.updated_at, now),
                _contents(name, record, _parse(record, data)),
                referrers.get(record.digest, 0),
                _pull_line(request, name, Reference(tag=tag.tag)),
            ]
        )
    body: list[object] = [
        el("h2", "Tags"),
        _sort_links(repository_url(name), by, [("pushed", "last push"), ("name", "name")]),
    ]
    if rows:
        body.append(table(["Tag", "Digest", "Pushed", "Size or platforms", "Referrers", "Pull"], rows))
    else:
        body.append(el("p", "No tags.", class_="muted"))
    if more and tags:
        query: dict[str, str | int] = {"n": limit, "from": offset + len(tags)}
        if by == "name":
            query["sort"] = by
        body.append(_next_page(repository_url(name, **query)))
    return page(name, *body, crumbs=[(name, repository_url(name))], admin_link=auth.may_operate(request))


async def show_manifest(request: web.Request) -> web.Response:
    """One manifest: what it says, its image configuration, what refers to it, and its JSON."""
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
                ("Digest", copy_field(str(record.digest), label="digest")),
                ("Pull", _pull_line(request, name, Reference(digest=record.digest))),
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
        image = await browsing.image_config(core, name, config.digest, config.media_type, config.size)
        if image is not None:
            body += [el("h2", "Image"), _image(image, core.now())]
        body += [el("h2", "Config"), _blobs(name, [config])]
        body += [
            el("h2", "Layers (", len(layers), ", ", size(total), " with the config)"),
            _blobs(name, layers),
        ]
        if image is not None and image.history:
            body += [el("h2", "History"), _history(image.history)]
    body += [el("h2", "Referrers"), _referrers(name, referrers)]
    body += [el("h2", "JSON"), el("pre", _pretty(data))]
    title = f"{name}@{record.digest}" if reference.tag is None else f"{name}:{reference.tag}"
    crumbs = [(name, repository_url(name)), (str(reference), manifest_url(name, str(reference)))]
    return page(title, *body, crumbs=crumbs, admin_link=auth.may_operate(request))


async def operations(request: web.Request) -> web.Response:
    """For administrators: storage used, the last garbage collections and what they freed, and
    the open upload sessions."""
    core = registry(request)
    stats = await core.meta.statistics()
    runs = await core.meta.gc_history(RECENT_GC_RUNS)
    sessions = await core.meta.recent_uploads(RECENT_UPLOADS)
    now = core.now()
    body: list[object] = [
        el("h2", "Storage"),
        definitions(
            [
                ("Repositories", int(stats.get("repositories", 0))),
                ("Manifests", _count_and_size(stats, "manifests", "manifest_bytes")),
                ("Blobs", _count_and_size(stats, "blobs", "blob_bytes")),
                ("Open upload sessions", int(stats.get("uploads", 0))),
            ]
        ),
        el("h2", "Garbage collection"),
    ]
    if runs:
        body.append(
            table(
                ["Started", "Took", "Manifests", "Tags", "Links", "Blobs", "Freed"],
                [
                    [
                        join([when(r.started_at, now), " (dry run)" if r.dry_run else ""]),
                        f"{r.duration:.2f} s",
                        r.manifests_deleted,
                        r.tags_deleted,
                        r.links_deleted,
                        r.blobs_deleted,
                        size(r.bytes_freed, short=True),
                    ]
                    for r in runs
                ],
            )
        )
    else:
        body.append(el("p", "No collection has run yet.", class_="muted"))
    body.append(el("h2", "Upload sessions"))
    if sessions:
        body.append(
            table(
                ["Repository", "Session", "Received", "Opened", "Last active", "By"],
                [
                    [
                        link(repository_url(u.repository), u.repository),
                        el("code", u.id),
                        size(u.offset, short=True),
                        when(u.created_at, now),
                        when(u.updated_at, now),
                        u.owner or el("span", "anonymous", class_="muted"),
                    ]
                    for u in sessions
                ],
            )
        )
    else:
        body.append(el("p", "No upload session is open.", class_="muted"))
    return page("Operations", *body, crumbs=[("operations", "/ui/operations")], admin_link=True)


async def not_found(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


# -- parts of pages ------------------------------------------------------------------------------


def _media_type(record: ManifestRecord) -> Html:
    """The media type, and the artifactType when it says more than "an image"."""
    if record.artifact_type and record.artifact_type not in browsing.IMAGE_CONFIG_TYPES:
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
    return size(sum(d.size for d in parsed.blobs), short=True)


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


def _count_and_size(stats: dict[str, float], count: str, total: str) -> Html:
    return join([int(stats.get(count, 0)), " (", size(int(stats.get(total, 0))), ")"])


def _code_list(items: Sequence[str]) -> Html | None:
    return el("ul", *(el("li", el("code", e)) for e in items), class_="plain") if items else None


def _image(image: browsing.ImageConfig, now: float) -> Html:
    created = None
    if image.created:
        stamp = parse_timestamp(image.created)
        created = when(stamp, now) if stamp is not None else image.created
    command = [*(image.entrypoint or []), *(image.cmd or [])]
    return definitions(
        [
            ("Created", created),
            ("Platform", image.platform),
            ("Entrypoint", el("code", shell_words(image.entrypoint)) if image.entrypoint else None),
            ("Command", el("code", shell_words(image.cmd)) if image.cmd else None),
            ("Runs", el("code", shell_words(command)) if command else None),
            ("User", image.user),
            ("Working directory", image.working_dir),
            ("Ports", ", ".join(image.exposed_ports) or None),
            ("Environment", _code_list(image.env)),
            ("Labels", annotation_list(image.labels) if image.labels else None),
        ]
    )


def _history(history: Sequence[dict[str, object]]) -> Html:
    rows = []
    for step in history:
        created_by = str(step.get("created_by") or step.get("comment") or "")
        rows.append(
            [
                str(step.get("created") or ""),
                el("code", created_by),
                el("span", "no layer", class_="muted") if step.get("empty_layer") else "layer",
            ]
        )
    return table(["Created", "Step", "Layer"], rows)


def _pretty(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), indent=2, ensure_ascii=False)
    except ValueError:
        return data.decode("utf-8", errors="replace")


# -- errors as pages ---------------------------------------------------------------------------------


def error_page(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return page(_TITLES.get(status, f"Error {status}"), el("p", message), status=status, headers=headers)


def error_as_page(request: web.Request, exc: Exception) -> web.Response | None:
    """On the pages' routes, an error (access control's included) is a page, not the API's JSON;
    its status and headers (``WWW-Authenticate``, ``Retry-After``) stay what they were. None:
    not a page's route, or not an error a page tells (the API's answer applies)."""
    if request.match_info.route not in request.app[auth.BROWSER_ROUTES]:
        return None
    if isinstance(exc, errors.RegistryError):
        return error_page(exc.status, exc.message or exc.error.message, exc.headers)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return error_page(exc.status, "There is no such page." if exc.status == 404 else exc.reason)
    return None
