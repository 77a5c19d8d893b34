"""Reading the browsing pages as a browser would: the stdlib's HTML parser, nothing of dockyard's.

A ``Page`` holds what a person sees (text, unescaped), what they can click (links) and how it
is laid out (tables under their ``<h2>`` section, ``<dl>`` fields), plus the raw source for
checks on escaping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass
class Link:
    href: str
    text: str = ""
    rel: str | None = None


@dataclass
class Cell:
    text: str = ""
    links: list[Link] = field(default_factory=list)
    values: list[str] = field(default_factory=list)  # of the fields in it (text to copy)
    titles: list[str] = field(default_factory=list)  # of the elements in it (full digests, exact times)

    @property
    def hrefs(self) -> list[str]:
        return [link.href for link in self.links]


@dataclass
class Table:
    section: str  # the <h2> above it ("" when none)
    headings: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)

    def records(self) -> list[dict[str, Cell]]:
        return [dict(zip(self.headings, row, strict=True)) for row in self.rows]

    def column(self, heading: str) -> list[Cell]:
        return [record[heading] for record in self.records()]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.title = ""
        self.h1 = ""
        self.h2: list[str] = []
        self.pre: list[str] = []
        self.links: list[Link] = []
        self.tables: list[Table] = []
        self.fields: dict[str, Cell] = {}
        self.open: list[str] = []
        self._link: Link | None = None
        self._cell: Cell | None = None
        self._dt = ""
        self._dd: Cell | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag not in _VOID:
            self.open.append(tag)
        for holder in (self._cell, self._dd):
            if holder is None:
                continue
            if tag == "input" and attributes.get("value") is not None:
                holder.values.append(attributes["value"] or "")
            if attributes.get("title"):
                holder.titles.append(attributes["title"] or "")
        if tag == "a":
            self._link = Link(attributes.get("href") or "", rel=attributes.get("rel"))
            self.links.append(self._link)
            for holder in (self._cell, self._dd):
                if holder is not None:
                    holder.links.append(self._link)
        elif tag == "h2":
            self.h2.append("")
        elif tag == "pre":
            self.pre.append("")
        elif tag == "table":
            self.tables.append(Table(self.h2[-1] if self.h2 else ""))
        elif tag == "tr":
            self._row: list[Cell] = []
            self._heading_row = False
        elif tag in ("td", "th"):
            self._cell = Cell()
            self._heading_row = self._heading_row or tag == "th"
        elif tag == "dt":
            self._dt = ""
        elif tag == "dd":
            self._dd = Cell()

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag == "a":
            self._link = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            if self._heading_row:
                self.tables[-1].headings = [c.text.strip() for c in self._row]
            else:
                self.tables[-1].rows.append(self._row)
        elif tag == "dd" and self._dd is not None:
            self.fields[self._dt.strip()] = self._dd
            self._dd = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        inside = set(self.open)
        if "title" in inside:
            self.title += data
        if "h1" in inside:
            self.h1 += data
        if "h2" in inside:
            self.h2[-1] += data
        if "pre" in inside:
            self.pre[-1] += data
        if self._link is not None:
            self._link.text += data
        if self._cell is not None:
            self._cell.text += data
        if "dt" in inside:
            self._dt += data
        if self._dd is not None:
            self._dd.text += data


@dataclass
class Page:
    response: httpx.Response
    source: str
    title: str
    h1: str
    text: str
    sections: list[str]
    pre: list[str]
    links: list[Link]
    tables: list[Table]
    fields: dict[str, Cell]

    @classmethod
    def of(cls, response: httpx.Response) -> Page:
        """Parse an HTML answer; it must be a well-formed page with the pages' headers."""
        assert response.headers["content-type"] == "text/html; charset=utf-8", response.headers
        source = response.text
        assert source.startswith("<!DOCTYPE html>"), source[:200]
        parser = _Parser()
        parser.feed(source)
        parser.close()
        assert parser.open == [], parser.open
        return cls(
            response,
            source,
            parser.title,
            parser.h1,
            "".join(parser.text),
            parser.h2,
            parser.pre,
            parser.links,
            parser.tables,
            parser.fields,
        )

    def table(self, section: str = "") -> Table:
        found = [t for t in self.tables if t.section.startswith(section)]
        assert len(found) == 1, (section, [t.section for t in self.tables])
        return found[0]

    def has_table(self, section: str) -> bool:
        return any(t.section.startswith(section) for t in self.tables)

    def link_to(self, href: str) -> Link:
        found = [link for link in self.links if link.href == href]
        assert found, (href, [link.href for link in self.links])
        return found[0]

    @property
    def next_link(self) -> str | None:
        found = [link.href for link in self.links if link.rel == "next"]
        assert len(found) <= 1, found
        return found[0] if found else None


def assert_page_headers(response: httpx.Response) -> None:
    """The headers every page and error page carries: no scripts, no sniffing, no referrer."""
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, (name, response.headers.get(name))
    policy = [p.strip() for p in response.headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in policy, policy
    assert not any("script-src" in p for p in policy), policy
