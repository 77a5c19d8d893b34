"""HTML for the browsing pages: escaping, elements, and the page around them.

Markup is built only here. Anything else given to these helpers (names, tags, annotations,
manifest JSON) is text and is escaped; only an ``Html`` value passes through as it is.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web

# No scripts, no fetches, no frames, nothing from elsewhere: a page is its own HTML and CSS
# (forms, the search, submit only to the registry itself).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # what a page shows depends on who asked
}

_STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--muted:#57606a;--line:#d0d7de;--head:#f6f8fa;
--bar:#1d3557;--link:#0550ae;--focus:#bf5b04}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--line:#30363d;
--head:#161b22;--bar:#161b22;--link:#6cb6ff;--focus:#f0883e}}
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
a{color:var(--link)}
a:focus-visible,input:focus-visible,button:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
.skip{position:absolute;left:-999px}
.skip:focus{left:1em;top:.5em;background:var(--bg);padding:.3em .6em;z-index:1}
header{background:var(--bar);color:#fff;padding:.6em 1.2em;display:flex;gap:1em;flex-wrap:wrap;
justify-content:space-between}
header a{color:#fff}
main{padding:1em 1.2em;max-width:90em}
h1{font-size:1.35em;word-break:break-all}
h2{font-size:1.1em;margin-top:1.6em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.35em .5em;text-align:left;vertical-align:top}
th{background:var(--head)}
code,pre,.digest{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
pre{background:var(--head);padding:.8em;overflow-x:auto;white-space:pre-wrap}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em}
dt{font-weight:600}
dd{margin:0;min-width:0}
ul.plain{list-style:none;margin:0;padding:0}
.muted{color:var(--muted)}
nav.pages{margin-top:1em}
input.copy{font-family:ui-monospace,monospace;font-size:.85em;width:100%;min-width:16em;box-sizing:border-box;
color:var(--fg);background:var(--head);border:1px solid var(--line);padding:.2em .3em}
form.search{display:flex;gap:.5em;margin:.5em 0;max-width:36em}
form.search input{flex:1;font:inherit;padding:.3em .5em}
form.search button{font:inherit;padding:.3em .8em}
.totals{font-size:1.05em}
td a.digest,td time{white-space:nowrap}
@media (max-width:40em){main{padding:.6em}dl{grid-template-columns:1fr}dt{margin-top:.4em}
th,td{padding:.3em}input.copy{min-width:12em}}
"""


class Html(str):
    """Markup safe to write as it is: made by the helpers below, never from a client's text."""


def esc(value: object) -> Html:
    """``value`` as HTML: escaped unless it already is markup."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    return Html(esc(separator).join(esc(p) for p in parts))


_VOID = frozenset({"br", "input", "meta", "hr", "img"})


def el(tag: str, *children: object, **attrs: str | None) -> Html:
    """``<tag attrs>children</tag>``; ``class_`` for ``class``, ``None`` leaves an attribute out.
    Void elements (``br``, ``input``) have no children and no end tag."""
    rendered = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for name, value in attrs.items()
        if value is not None
    )
    if tag in _VOID:
        return Html(f"<{tag}{rendered}>")
    return Html(f"<{tag}{rendered}>{join(children)}</{tag}>")


def link(href: str, *children: object, **attrs: str | None) -> Html:
    return el("a", *children, href=href, **attrs)


def url(*segments: str, **query: str | int) -> str:
    """A path from segments (each quoted; ``/`` kept, for repository names) and a query."""
    path = "/".join(quote(s, safe="/:@") for s in segments)
    return f"{path}?{urlencode(query)}" if query else path


def table(headings: Sequence[str], rows: Iterable[Sequence[object]]) -> Html:
    """A table that scrolls sideways on a narrow screen instead of widening the page."""
    head = el("tr", *(el("th", h, scope="col") for h in headings))
    body = [el("tr", *(el("td", cell) for cell in row)) for row in rows]
    return el("div", el("table", el("thead", head), el("tbody", *body)), class_="scroll")


def definitions(items: Iterable[tuple[str, object]]) -> Html:
    """A ``<dl>`` of the items whose value is not None."""
    return el("dl", *(join([el("dt", k), el("dd", v)]) for k, v in items if v is not None))


def size(n: int, short: bool = False) -> Html:
    """``512 B``, or ``1.5 KiB (1536 B)``: readable, and the exact count (``short``: the exact
    count in a title)."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    exact = f"{n} B"
    if unit == "B":
        return esc(exact)
    return el("span", f"{value:.1f} {unit}", title=exact) if short else esc(f"{value:.1f} {unit} ({exact})")


def copy_field(text: str, label: str) -> Html:
    """Text to copy whole: a read-only field (select it, copy it; no script needed)."""
    return el("input", type="text", readonly="readonly", value=text, aria_label=label, class_="copy")


def short_digest(digest: object, href: str) -> Html:
    """``sha256:6686a4ec…`` linked, the full digest in its title."""
    full = str(digest)
    algorithm, _, hex_part = full.partition(":")
    return link(href, f"{algorithm}:{hex_part[:8]}…", title=full, class_="digest")


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def ago(seconds: float) -> str:
    """``just now``, ``5 minutes ago``, ``3 days ago``: how long ago, in the largest whole unit."""
    if seconds < 45:
        return "just now"
    for unit, length in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "a minute ago"


def when(stamp: float | None, now: float) -> Html:
    """A relative time, the exact UTC timestamp in its title (and machine-readable)."""
    if stamp is None:
        return el("span", "never", class_="muted")
    moment = _utc(stamp)
    exact = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    text = ago(now - stamp) if now >= stamp else exact
    return el("time", text, datetime=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), title=exact)


def parse_timestamp(text: str) -> float | None:
    """An RFC 3339 timestamp (an image config's ``created``) as seconds, or None."""
    cleaned = text.strip().replace("Z", "+00:00")
    if "." in cleaned:  # Go writes nanoseconds; Python reads at most microseconds
        head, _, rest = cleaned.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        cleaned = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def shell_words(words: Sequence[str]) -> str:
    """A command as a shell would read it back."""
    return " ".join(shlex.quote(w) for w in words)


def search_form(action: str, query: str, sort: str) -> Html:
    """A plain GET form: the search is a link like any other."""
    return el(
        "form",
        el("label", "Search repositories", for_="q", class_="skip"),
        el(
            "input",
            type="search",
            id="q",
            name="q",
            value=query,
            placeholder="Search repositories",
            maxlength="255",
            autocomplete="off",
        ),
        el("input", type="hidden", name="sort", value=sort),
        el("button", "Search", type="submit"),
        method="get",
        action=action,
        role="search",
        class_="search",
    )


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
    admin_link: bool = False,
) -> web.Response:
    """A whole page: ``crumbs`` (text, href) lead from the repository list to here;
    ``admin_link`` adds the operations page to the header."""
    trail = [link("/ui/", "dockyard")] + [join([" / ", link(href, text)]) for text, href in crumbs]
    tools = el("nav", link("/ui/operations", "operations"), aria_label="administration") if admin_link else ""
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
                el(
                    "body",
                    link("#main", "Skip to content", class_="skip"),
                    el("header", el("nav", *trail, aria_label="breadcrumbs"), tools),
                    el("main", el("h1", title), *body, id="main"),
                ),
                lang="en",
            ),
        ]
    )
    return web.Response(
        text=document,
        status=status,
        headers={**(headers or {}), **SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"},
    )
