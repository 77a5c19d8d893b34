"""HTML for the browsing pages: escaping, elements, and the page around them.

Markup is built only here. Anything else given to these helpers (names, tags, annotations,
manifest JSON) is text and is escaped; only an ``Html`` value passes through as it is.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlencode

from aiohttp import web

# No scripts, no fetches, no frames, nothing from elsewhere: a page is its own HTML and CSS.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # what a page shows depends on who asked
}

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#fff}
header{background:#1d3557;color:#fff;padding:.6em 1.2em}
header a{color:#fff}
main{padding:1em 1.2em;max-width:80em}
h1{font-size:1.35em;word-break:break-all}
h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #d0d7de;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
code,pre,.digest{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;white-space:pre-wrap}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}
dt{font-weight:600}
dd{margin:0}
ul.plain{list-style:none;margin:0;padding:0}
.muted{color:#57606a}
nav.pages{margin-top:1em}
"""


class Html(str):
    """Markup safe to write as it is: made by the helpers below, never from a client's text."""


def esc(value: object) -> Html:
    """``value`` as HTML: escaped unless it already is markup."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    return Html(esc(separator).join(esc(p) for p in parts))


def el(tag: str, *children: object, **attrs: str | None) -> Html:
    """``<tag attrs>children</tag>``; ``class_`` for ``class``, ``None`` leaves an attribute out."""
    rendered = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for name, value in attrs.items()
        if value is not None
    )
    return Html(f"<{tag}{rendered}>{join(children)}</{tag}>")


def link(href: str, *children: object, **attrs: str | None) -> Html:
    return el("a", *children, href=href, **attrs)


def url(*segments: str, **query: str | int) -> str:
    """A path from segments (each quoted; ``/`` kept, for repository names) and a query."""
    path = "/".join(quote(s, safe="/:@") for s in segments)
    return f"{path}?{urlencode(query)}" if query else path


def table(headings: Sequence[str], rows: Iterable[Sequence[object]]) -> Html:
    head = el("tr", *(el("th", h) for h in headings))
    body = [el("tr", *(el("td", cell) for cell in row)) for row in rows]
    return el("table", el("thead", head), el("tbody", *body))


def definitions(items: Iterable[tuple[str, object]]) -> Html:
    """A ``<dl>`` of the items whose value is not None."""
    return el("dl", *(join([el("dt", k), el("dd", v)]) for k, v in items if v is not None))


def size(n: int) -> Html:
    """``512 B``, or ``1.5 KiB (1536 B)``: readable, and the exact count."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    exact = f"{n} B"
    return esc(exact if unit == "B" else f"{value:.1f} {unit} ({exact})")


def annotation_list(values: dict[str, str] | None) -> Html:
    if not values:
        return Html("")
    return el("ul", *(el("li", el("code", k), " = ", v) for k, v in values.items()), class_="plain")


def page(
    title: str,
    *body: object,
    crumbs: Sequence[tuple[str, str]] = (),
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A whole page: ``crumbs`` (text, href) lead from the repository list to here."""
    trail = [link("/ui/", "dockyard")] + [join([" / ", link(href, text)]) for text, href in crumbs]
    document = join(
        [
            Html("<!DOCTYPE html>\n"),
            el(
                "html",
                el(
                    "head",
                    Html('<meta charset="utf-8">'),
                    Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
                    el("title", title, " - dockyard"),
                    el("style", Html(_STYLE)),
                ),
                el("body", el("header", *trail), el("main", el("h1", title), *body)),
                lang="en",
            ),
        ]
    )
    return web.Response(
        text=document,
        status=status,
        headers={**(headers or {}), **SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"},
    )
