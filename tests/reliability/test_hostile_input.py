"""Hostile input over the HTTP API: every bad request gets a 4xx with the spec's JSON error body,
never a 5xx, and nothing lands on disk outside the data directory's layout.

One dedicated server runs in a fresh sandbox directory (its working directory is in there too),
so that any file a request manages to create outside ``data/`` shows up at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.reliability.support import (
    SPEC_CODES,
    STATS,
    check_raw_error,
    error_doc,
    first_response,
    request_head,
    run_fsck,
    send_raw,
    server_errors,
    spec_allows_digest,
    spec_allows_name,
    spec_allows_tag,
    status_lines,
    unexpected_files,
)
from tests.support.api_helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RawResponse,
    descriptor,
    digest_of,
    no_server_errors,
    raw_request,
)
from tests.support.server import DockyardServer

# A token in every path-like hostile input, searched for on disk at the end.
MARK = f"dyhostile{uuid.uuid4().hex[:10]}"
MANIFEST_LIMIT = 4 * 1024 * 1024  # the default manifest_max_bytes
UNKNOWN_DIGEST = "sha256:" + "0" * 64
ZERO_UUID = "00000000-0000-0000-0000-000000000000"

TAGS_REPO = "hostile/tags"
TAGS = sorted(["a", "b.1", "latest", "v1", "v2", "Z9", "_x", "z" * 128, "A-b_c.d"])
BLOB_REPO = "hostile/blobs"
BLOB = random.Random(7).randbytes(100)
MANIFEST_REPO = "hostile/manifests"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
LAYER = b"a layer, really" * 50
CHUNK_REPO = "hostile/chunks"
MOUNT_SOURCE = "hostile/src"

# Examples per property; HOSTILE_EXAMPLES=500 explores further (the default keeps the file under a minute).
HOSTILE = settings(
    deadline=None,
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def count(kind: str) -> None:
    """One generated input: counted in total and by kind, for the summary line."""
    STATS["hostile inputs generated"] += 1
    STATS[f"hostile inputs: {kind}"] += 1


# -- the sandboxed server ------------------------------------------------------------------------


def _marked_paths(root: Path, depth: int) -> list[str]:
    """Paths under ``root`` (to ``depth`` levels) whose name holds MARK."""
    found: list[str] = []
    if depth < 0 or not root.is_dir():
        return found
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if MARK in entry.name:
                found.append(entry.path)
            if depth > 0 and entry.is_dir(follow_symlinks=False):
                found += _marked_paths(Path(entry.path), depth - 1)
    return found


@dataclass
class Sandbox:
    """A server whose data directory is ``outer/root/data`` and whose working dir is ``outer/cwd``."""

    server: DockyardServer
    outer: Path
    client: httpx.Client
    responses: list[int] = field(default_factory=list, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def port(self) -> int:
        return self.server.port

    def raw(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> RawResponse:
        """One request exactly as written; a 5xx fails the test at once."""
        r = raw_request("127.0.0.1", self.port, method, target, headers=headers, body=body)
        self.responses.append(r.status)
        assert r.status < 500, (method, target[:200], r.status, r.body[:300])
        return r

    def status(self, location: str) -> int:
        """An upload session's offset."""
        r = self.client.get(location)
        assert r.status_code == 204, (r.status_code, r.text)
        return int(r.headers["range"].partition("-")[2]) + 1

    def open_session(self, repo: str) -> str:
        r = self.client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, (r.status_code, r.text)
        location: str = r.headers["location"]
        return location

    def session_with(self, repo: str, prefix: bytes) -> str:
        location = self.open_session(repo)
        if prefix:
            r = self.client.patch(location, content=prefix, headers={"Content-Range": f"0-{len(prefix) - 1}"})
            assert r.status_code == 202, (r.status_code, r.text)
        return location

    def finish(self, location: str, repo: str, staged: bytes) -> None:
        """The session holds exactly ``staged``: it commits under that digest and serves those bytes."""
        digest = digest_of(staged)
        r = self.client.put(location, params={"digest": digest})
        assert r.status_code == 201, ("session lost or corrupted its bytes", r.status_code, r.text)
        got = self.client.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status_code == 200 and got.content == staged


def _push(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest


def _image(config: bytes = CONFIG, layers: tuple[bytes, ...] = (LAYER,), **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        **extra,
    }


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, indent=1).encode()


# A manifest whose layer no repository has: any push of it stops at MANIFEST_BLOB_UNKNOWN.
ORPHAN_MANIFEST = _encode(_image(layers=(b"this layer was never pushed " + MARK.encode(),)))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    outer = tmp_path_factory.mktemp("hostile")
    (outer / "sibling").mkdir()
    (outer / "sibling" / "sentinel").write_text("untouched")
    (outer / "cwd").mkdir()
    with contextlib.chdir(outer / "cwd"):  # the server's working directory: relative writes land here
        server = DockyardServer(outer / "root" / "data", workers=2).start()
    client = httpx.Client(base_url=server.url, timeout=30.0, event_hooks={"response": [no_server_errors]})
    box = Sandbox(server, outer, client)
    try:
        _push(client, TAGS_REPO, CONFIG)
        _push(client, TAGS_REPO, LAYER)
        body = _encode(_image())
        for tag in TAGS:
            r = client.put(
                f"/v2/{TAGS_REPO}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert r.status_code == 201, r.text
        _push(client, BLOB_REPO, BLOB)
        _push(client, MANIFEST_REPO, CONFIG)
        _push(client, MANIFEST_REPO, LAYER)
        _push(client, MOUNT_SOURCE, BLOB)
        yield box
    finally:
        client.close()
        server.stop()


# -- repository names ------------------------------------------------------------------------------

NAME_PIECES = [
    "..", ".", "%2e%2e", "%2E%2E", "%2e", "", "etc", "passwd", MARK, "%2f", "%2F..", "..%2f..", "%00",
    "%5c", "\\", "C:", "~", "a", "library", "é", "名前", "\u202e", " ", "-", "_", "__", ".hidden",
    "UPPER", "a" * 300, "b" * 250, "%", "%zz", "%ff", "%ED%A0%80", "{x}", "?", "#", ";", "..;",
]  # fmt: skip
_valid_component = st.from_regex(r"[a-z0-9]{1,5}([._-][a-z0-9]{1,4}){0,2}", fullmatch=True)
_component = st.one_of(st.sampled_from(NAME_PIECES), st.text(max_size=12), _valid_component)
_edge = st.sampled_from(["", "", "/", "//", "%2F", "/tmp/", "../../"])


@st.composite
def hostile_names(draw: st.DrawFn) -> str:
    """A repository name as it goes on the wire (percent-encoded where it must be)."""
    if draw(st.integers(0, 9)) == 0:  # an absolute path, as a name
        text = draw(st.sampled_from(["/tmp/", "/", "//tmp/", "%2Ftmp%2F", "/etc/"])) + MARK
    else:
        parts = draw(st.lists(_component, min_size=1, max_size=6))
        joiner = draw(st.sampled_from(["/", "/", "/", "//", "%2F", "/./", "/../"]))
        text = draw(_edge) + joiner.join(parts) + draw(_edge)
    return quote(text, safe="/%")


# Path segments that route a request somewhere else when they appear inside a name.
_ROUTE_WORDS = {"tags", "list", "manifests", "blobs", "uploads", "referrers"}


def _routes_elsewhere(seen: str) -> bool:
    return not seen or "{" in seen or "}" in seen or bool(_ROUTE_WORDS & set(seen.split("/")))


def _expect_name_error(r: RawResponse, seen: str) -> None:
    if _routes_elsewhere(seen):
        assert 400 <= r.status < 500, (r.status, r.body[:200])
        if r.body:
            error_doc(r.status, r.headers.get("content-type"), r.body)
    else:
        check_raw_error(r, 400, "NAME_INVALID")


@HOSTILE
@given(hostile_names())
def test_hostile_repository_names_get_name_invalid_on_every_endpoint(sandbox: Sandbox, wire: str) -> None:
    count("repository names")
    seen = unquote(wire)
    valid = spec_allows_name(seen)
    raw = sandbox.raw
    manifest_headers = {"Content-Type": OCI_MANIFEST}
    bad_digest = digest_of(b"not this body")
    orphan, uploads = ORPHAN_MANIFEST, f"/v2/{wire}/blobs/uploads"
    cases: list[tuple[str, str, dict[str, str], bytes, tuple[int, str] | None]] = [
        ("GET", f"/v2/{wire}/tags/list", {}, b"", (404, "NAME_UNKNOWN")),
        ("GET", f"/v2/{wire}/manifests/latest", {}, b"", (404, "MANIFEST_UNKNOWN")),
        ("PUT", f"/v2/{wire}/manifests/latest", manifest_headers, orphan, (400, "MANIFEST_BLOB_UNKNOWN")),
        ("DELETE", f"/v2/{wire}/manifests/latest", {}, b"", (404, "NAME_UNKNOWN")),
        ("GET", f"/v2/{wire}/blobs/{UNKNOWN_DIGEST}", {}, b"", (404, "BLOB_UNKNOWN")),
        ("DELETE", f"/v2/{wire}/blobs/{UNKNOWN_DIGEST}", {}, b"", (404, "BLOB_UNKNOWN")),
        ("POST", f"{uploads}/?digest={bad_digest}", {}, b"some bytes", (400, "DIGEST_INVALID")),
        ("GET", f"{uploads}/{ZERO_UUID}", {}, b"", (404, "BLOB_UPLOAD_UNKNOWN")),
        ("PATCH", f"{uploads}/{ZERO_UUID}", {}, b"abc", (404, "BLOB_UPLOAD_UNKNOWN")),
        ("GET", f"/v2/{wire}/referrers/{UNKNOWN_DIGEST}", {}, b"", None),
    ]  # fmt: skip
    for method, target, headers, body, if_valid in cases:
        r = raw(method, target, headers, body)
        if not valid:
            _expect_name_error(r, seen)
        elif if_valid is None:
            assert r.status == 200, (target, r.status, r.body[:200])
            assert r.json()["manifests"] == []
        else:
            check_raw_error(r, *if_valid)
    r = raw("HEAD", f"/v2/{wire}/manifests/latest")
    assert r.status in ((404,) if valid else (400, 404)), r.status
    # Opening a session: refused for a bad name; for a good one, opened and cancelled again.
    r = raw("POST", f"/v2/{wire}/blobs/uploads/")
    if valid:
        assert r.status == 202, (r.status, r.body[:200])
        assert raw("DELETE", r.headers["location"]).status == 204
    else:
        _expect_name_error(r, seen)


@HOSTILE
@given(hostile_names())
def test_hostile_mount_source_names_get_name_invalid(sandbox: Sandbox, wire: str) -> None:
    count("mount source names")
    seen = unquote(wire)
    target = f"/v2/{CHUNK_REPO}/blobs/uploads/?mount={digest_of(BLOB)}&from={quote(seen, safe='')}"
    r = sandbox.raw("POST", target)
    if seen == MOUNT_SOURCE:
        assert r.status == 201
    elif spec_allows_name(seen):
        # spec: a registry unable to mount "SHOULD return a 202" and open a session instead
        assert r.status == 202, (r.status, r.body[:200])
        assert sandbox.raw("DELETE", r.headers["location"]).status == 204
    elif seen == "":
        assert r.status in (201, 202, 400), (r.status, r.body[:200])  # `from=` empty: no source given
        if r.status == 202:
            assert sandbox.raw("DELETE", r.headers["location"]).status == 204
    else:
        check_raw_error(r, 400, "NAME_INVALID")


# -- upload session ids ------------------------------------------------------------------------------

ID_PIECES = [
    "..",
    "../../etc/passwd",
    f"../../../tmp/{MARK}",
    "%2e%2e%2f" + MARK,
    ZERO_UUID.upper(),
    " ",
    MARK,
]


@HOSTILE
@given(st.one_of(st.sampled_from(ID_PIECES), st.text(min_size=1, max_size=80), st.uuids().map(str)))
def test_hostile_upload_session_ids_get_blob_upload_unknown(sandbox: Sandbox, upload_id: str) -> None:
    count("upload session ids")
    base = f"/v2/{CHUNK_REPO}/blobs/uploads/{quote(upload_id, safe='')}"
    digest = digest_of(b"abc")
    for method, target, body in [
        ("GET", base, b""),
        ("PATCH", base, b"abc"),
        ("PUT", f"{base}?digest={digest}", b"abc"),
        ("DELETE", base, b""),
    ]:
        r = sandbox.raw(method, target, {"Content-Range": "0-2"} if body else {}, body)
        # An id with a brace does not route at all (the route table's expressions exclude braces).
        routable = "{" not in upload_id and "}" not in upload_id
        check_raw_error(
            r, 404, "BLOB_UPLOAD_UNKNOWN" if routable else {"BLOB_UPLOAD_UNKNOWN", "NAME_UNKNOWN"}
        )


def test_a_session_is_not_reachable_through_another_repository_or_a_variant_of_its_id(
    sandbox: Sandbox,
) -> None:
    location = sandbox.session_with(CHUNK_REPO, b"first")
    upload_id = location.rsplit("/", 1)[1]
    variants = [
        f"/v2/{MANIFEST_REPO}/blobs/uploads/{upload_id}",
        f"/v2/{CHUNK_REPO}/blobs/uploads/{upload_id.upper()}",
        f"/v2/{CHUNK_REPO}/blobs/uploads/{upload_id}x",
        f"/v2/{CHUNK_REPO}/blobs/uploads/{upload_id[:-1]}",
        f"/v2/{CHUNK_REPO}/blobs/uploads/%2e%2e%2f{upload_id}",
    ]
    for target in variants:
        count("upload session ids")
        for method, body in [("GET", b""), ("PATCH", b"xx"), ("DELETE", b"")]:
            r = sandbox.raw(method, target, {"Content-Range": "5-6"} if body else {}, body)
            check_raw_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert sandbox.status(location) == 5
    sandbox.finish(location, CHUNK_REPO, b"first")


# -- tags and references ---------------------------------------------------------------------------------

TAG_PIECES = [
    ".",
    "..",
    "-x",
    ".x",
    "_x",
    "x" * 128,
    "x" * 129,
    "latest",
    f"../../{MARK}",
    "a:b",
    "A" * 5,
    "é",
    "\x00",
]


@HOSTILE
@given(st.one_of(st.sampled_from(TAG_PIECES), st.text(min_size=1, max_size=140)))
def test_hostile_tags_are_refused_or_unknown(sandbox: Sandbox, tag: str) -> None:
    count("tags")
    wire = quote(tag, safe="")
    path = f"/v2/{TAGS_REPO}/manifests/{wire}"
    get_expected: tuple[int, str] | None
    if ":" in tag:
        get_expected = put_expected = (400, "DIGEST_INVALID")
    elif spec_allows_tag(tag):
        get_expected = (404, "MANIFEST_UNKNOWN") if tag not in TAGS else None  # a known tag: left alone
        put_expected = (400, "MANIFEST_BLOB_UNKNOWN")
    else:
        get_expected = put_expected = (400, "MANIFEST_INVALID")
    headers = {"Content-Type": OCI_MANIFEST}
    if "{" in tag or "}" in tag:  # does not route at all (the route table's expressions exclude braces)
        check_raw_error(sandbox.raw("GET", path), 404, "NAME_UNKNOWN")
        return
    if get_expected is not None:
        check_raw_error(sandbox.raw("GET", path), *get_expected)
        check_raw_error(sandbox.raw("DELETE", path), *get_expected)
        assert sandbox.raw("HEAD", path).status == get_expected[0]
    check_raw_error(sandbox.raw("PUT", path, headers, ORPHAN_MANIFEST), *put_expected)


@HOSTILE
@given(
    st.lists(
        st.one_of(st.sampled_from(TAG_PIECES), st.text(min_size=0, max_size=140)), min_size=1, max_size=4
    )
)
def test_hostile_tag_parameters_on_a_push_by_digest(sandbox: Sandbox, tags: list[str]) -> None:
    count("tag parameters")
    digest = digest_of(ORPHAN_MANIFEST)
    query = "&".join(f"tag={quote(t, safe='')}" for t in tags)
    r = sandbox.raw(
        "PUT",
        f"/v2/{MANIFEST_REPO}/manifests/{digest}?{query}",
        {"Content-Type": OCI_MANIFEST},
        ORPHAN_MANIFEST,
    )
    if all(spec_allows_tag(t) for t in tags):
        check_raw_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    else:
        check_raw_error(r, 400, "MANIFEST_INVALID")


# -- digests -----------------------------------------------------------------------------------------

_algorithms = st.one_of(
    st.sampled_from(
        ["sha256", "sha512", "SHA256", "md5", "sha1", "blake3", "sha256+b64", "", "sha-256", MARK]
    ),
    st.text(max_size=10),
)
_hex_lengths = st.sampled_from([0, 1, 32, 63, 64, 65, 127, 128, 129, 300])


@st.composite
def hostile_digests(draw: st.DrawFn) -> str:
    algorithm = draw(_algorithms)
    separator = draw(st.sampled_from([":", ":", ":", "", "::", "%3A"]))
    length = draw(_hex_lengths)
    style = draw(st.sampled_from(["lower", "upper", "mixed", "nonhex", "text", "path"]))
    hex_ = "".join(draw(st.sampled_from("0123456789abcdef")) for _ in range(min(length, 8))) * (
        length // 8 + 1
    )
    hex_ = hex_[:length]
    if style == "upper":
        hex_ = hex_.upper() or "A"
    elif style == "mixed":
        hex_ = "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(hex_)) + "F"
    elif style == "nonhex":
        hex_ = hex_[:-1] + draw(st.sampled_from("gz=_-+/ .é"))
    elif style == "text":
        hex_ = draw(st.text(max_size=70))
    elif style == "path":
        hex_ = f"../../../tmp/{MARK}"
    text = f"{algorithm}{separator}{hex_}"
    return text if not spec_allows_digest(text) else text + "0"


@HOSTILE
@given(hostile_digests())
def test_hostile_digests_get_digest_invalid_on_every_endpoint(sandbox: Sandbox, digest: str) -> None:
    count("digests")
    wire = quote(digest, safe=":")
    seen = unquote(wire)
    q = quote(digest, safe="")
    raw = sandbox.raw
    expect = (400, "DIGEST_INVALID")
    for method, target in [
        ("GET", f"/v2/{BLOB_REPO}/blobs/{wire}"),
        ("DELETE", f"/v2/{BLOB_REPO}/blobs/{wire}"),
        ("GET", f"/v2/{BLOB_REPO}/referrers/{wire}"),
    ]:
        r = raw(method, target)
        if not seen or set(seen) & set("/{}"):  # an empty, slashed or braced segment routes elsewhere
            assert 400 <= r.status < 500 and (
                not r.body or error_doc(r.status, r.headers["content-type"], r.body)
            )
        else:
            check_raw_error(r, *expect)
    assert raw("HEAD", f"/v2/{BLOB_REPO}/blobs/{wire}").status in (400, 404, 405)
    if ":" in seen and not set(seen) & set("/{}"):  # a reference with a colon is a digest
        for method in ("GET", "DELETE"):
            check_raw_error(raw(method, f"/v2/{TAGS_REPO}/manifests/{wire}"), *expect)
        r = raw(
            "PUT", f"/v2/{MANIFEST_REPO}/manifests/{wire}", {"Content-Type": OCI_MANIFEST}, ORPHAN_MANIFEST
        )
        check_raw_error(r, *expect)
    check_raw_error(raw("POST", f"/v2/{BLOB_REPO}/blobs/uploads/?digest={q}", {}, b"body"), *expect)
    r = raw("POST", f"/v2/{BLOB_REPO}/blobs/uploads/?mount={q}&from={MOUNT_SOURCE}")
    check_raw_error(r, *expect)
    location = sandbox.session_with(CHUNK_REPO, b"x")
    check_raw_error(raw("PUT", f"{location}?digest={q}"), *expect)
    check_raw_error(raw("PUT", f"{location}?digest={q}", {"Content-Range": "1-2"}, b"yz"), *expect)
    assert sandbox.status(location) == 1, "a refused commit must leave the session as it was"
    sandbox.finish(location, CHUNK_REPO, b"x")


@HOSTILE
@given(_algorithms)
def test_hostile_digest_algorithm_parameter(sandbox: Sandbox, algorithm: str) -> None:
    count("digest-algorithm parameters")
    r = sandbox.raw("POST", f"/v2/{CHUNK_REPO}/blobs/uploads/?digest-algorithm={quote(algorithm, safe='')}")
    if algorithm in ("sha256", "sha512", ""):
        assert r.status == 202, (r.status, r.body[:200])
        assert sandbox.raw("DELETE", r.headers["location"]).status == 204
    else:
        check_raw_error(r, 400, "DIGEST_INVALID")


# -- Content-Range on upload chunks ------------------------------------------------------------------------

GARBAGE_CONTENT_RANGES = ["", " ", "bytes", "0-2/", "0x0-0x2", "0-2 ", "\t0-2", "½-2", "0 - 2"]
GARBAGE_RANGES = ["bytes=", "bytes=-", "bytes=--1", "bytes=a-b", "=", "bytes=1-2-3", "bytes=-0"]


def _latin1(text: str) -> str:
    """Header values travel as latin-1: anything else becomes '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")


_big = st.one_of(
    st.integers(0, 12), st.integers(0, 2**70), st.sampled_from([10**19, 10**25, 2**63, 2**64 - 1])
)


@st.composite
def content_ranges(draw: st.DrawFn) -> str:
    """A Content-Range as a client might send it, right, nearly right, or nothing like it."""
    kind = draw(st.sampled_from(["spec", "rfc", "negative", "garbage", "multi"]))
    start, end = draw(_big), draw(_big)
    if draw(st.booleans()):  # often near the right range, so the interesting neighbours come up
        start = draw(st.integers(0, 8))
        end = start + draw(st.integers(-2, 6))
    if kind == "spec":
        return f"{start}-{end}"
    if kind == "rfc":
        total = draw(st.sampled_from(["*", str(end + 1), "0", str(2**64)]))
        return draw(
            st.sampled_from([f"bytes {start}-{end}/{total}", f"bytes={start}-{end}", f"bytes {start}-{end}"])
        )
    if kind == "negative":
        return draw(st.sampled_from([f"-{start}-{end}", f"{start}--{end}", f"-{end}", f"{start}-", "-"]))
    if kind == "multi":
        return f"{start}-{end},{end + 1}-{end + 4}"
    return draw(st.one_of(st.text(max_size=30).map(_latin1), st.sampled_from(GARBAGE_CONTENT_RANGES)))


def _header_safe(value: str) -> str:
    return "".join(c if c.isprintable() and c not in "\r\n" else "?" for c in value)


def _check_chunk_answer(r: RawResponse, header: str, before: int, length: int, success: int) -> bool:
    """Whether the chunk was taken; a refusal must be a spec error telling where the session stands."""
    numbers = [int(n) for n in re.findall(r"[0-9]+", header)]
    if r.status == success:
        if header.strip():  # an empty Content-Range is no Content-Range: the chunk is streamed on
            assert numbers[:2] == [before, before + length - 1], ("accepted a chunk that is not next", header)
        return True
    code = check_raw_error(r, {400, 416}, {"BLOB_UPLOAD_INVALID", "SIZE_INVALID"})
    spec_form = re.fullmatch(r"\s*[0-9]+-[0-9]+\s*", header)
    inverted = len(numbers) >= 2 and numbers[1] < numbers[0]  # held to the same rule by its own test below
    if r.status == 416 and not inverted:
        # ARCHITECTURE.md: a 416 on a session carries Location and Range, so the client goes on at once.
        assert r.headers.get("location") and r.headers.get("range") == f"0-{before - 1}", (header, r.headers)
    if spec_form and numbers[0] <= numbers[1] < 10**18 and numbers[0] != before:
        assert r.status == 416, ("spec: a chunk out of order gets 416", header, r.status)
    assert code in SPEC_CODES
    return False


@HOSTILE
@given(st.integers(0, 6), content_ranges(), st.binary(min_size=1, max_size=5))
def test_hostile_content_range_on_patch_leaves_a_consistent_session(
    sandbox: Sandbox, prefix_length: int, header: str, chunk: bytes
) -> None:
    count("Content-Range on PATCH")
    header = _header_safe(header)
    prefix = os.urandom(prefix_length)
    location = sandbox.session_with(CHUNK_REPO, prefix)
    r = sandbox.raw("PATCH", location, {"Content-Range": header}, chunk)
    taken = _check_chunk_answer(r, header, len(prefix), len(chunk), 202)
    staged = prefix + chunk if taken else prefix
    assert sandbox.status(location) == len(staged), "a refused chunk must not change the session"
    sandbox.finish(location, CHUNK_REPO, staged)


@HOSTILE
@given(st.integers(0, 6), content_ranges(), st.binary(min_size=1, max_size=5))
def test_hostile_content_range_on_the_closing_put(
    sandbox: Sandbox, prefix_length: int, header: str, chunk: bytes
) -> None:
    count("Content-Range on PUT")
    header = _header_safe(header)
    prefix = os.urandom(prefix_length)
    repo = f"hostile/put-{uuid.uuid4().hex[:12]}"  # fresh: a blob there can only come from this PUT
    location = sandbox.session_with(repo, prefix)
    digest = digest_of(prefix + chunk)
    r = sandbox.raw("PUT", f"{location}?digest={digest}", {"Content-Range": header}, chunk)
    if _check_chunk_answer(r, header, len(prefix), len(chunk), 201):
        got = sandbox.client.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status_code == 200 and got.content == prefix + chunk
    else:
        assert sandbox.client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        assert sandbox.status(location) == len(prefix)
        sandbox.finish(location, repo, prefix)


@pytest.mark.parametrize(
    ("method", "prefix", "header"), [("PATCH", b"abc", "9-4"), ("PUT", b"", "bytes 1-0/*")]
)
def test_an_inverted_content_range_gets_416_with_location_and_range(
    sandbox: Sandbox, method: str, prefix: bytes, header: str
) -> None:
    count("Content-Range inverted")
    location = sandbox.session_with(CHUNK_REPO, prefix)
    target = location if method == "PATCH" else f"{location}?digest={digest_of(prefix + b'xy')}"
    r = sandbox.raw(method, target, {"Content-Range": header}, b"xy")
    check_raw_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers.get("location") == location, ("416 without Location", header, r.headers)
    assert r.headers.get("range") == f"0-{len(prefix) - 1}", ("416 without Range", header, r.headers)
    assert sandbox.status(location) == len(prefix)
    sandbox.finish(location, CHUNK_REPO, prefix)


# -- Range on blob GETs ---------------------------------------------------------------------------------


@st.composite
def range_headers(draw: st.DrawFn) -> tuple[str, tuple[int | None, int | None] | None]:
    """A Range header, and the single byte-range it denotes (None when it is not one)."""
    kind = draw(st.sampled_from(["closed", "open", "suffix", "multi", "garbage", "unit"]))
    first = draw(st.one_of(st.integers(0, 120), st.integers(0, 10**18), st.sampled_from([10**19, 10**30])))
    last = draw(st.one_of(st.integers(0, 120), st.integers(0, 10**18), st.sampled_from([10**19, 10**30])))
    if kind == "closed":
        return f"bytes={first}-{last}", (first, last)
    if kind == "open":
        return f"bytes={first}-", (first, None)
    if kind == "suffix":
        return f"bytes=-{last}", (None, last)
    if kind == "multi":
        return f"bytes={first}-{last},{last}-{last + 3}", None
    if kind == "unit":
        return draw(
            st.sampled_from([f"items={first}-{last}", f"bytes {first}-{last}", f"bytes=-{first}-{last}"])
        ), None
    text = draw(st.one_of(st.text(max_size=30), st.sampled_from(GARBAGE_RANGES)))
    return _header_safe(text.encode("latin-1", "replace").decode("latin-1")), None


@HOSTILE
@given(range_headers())
def test_hostile_range_headers_on_blob_get(
    sandbox: Sandbox, case: tuple[str, tuple[int | None, int | None] | None]
) -> None:
    count("Range on GET")
    header, span = case
    size = len(BLOB)
    r = sandbox.raw("GET", f"/v2/{BLOB_REPO}/blobs/{digest_of(BLOB)}", {"Range": header})
    huge = span is not None and any(v is not None and v >= 10**18 for v in span)
    if header == "bytes=-0":
        span = (None, 0)
    if span is None or (huge and r.status == 200):
        # Not one byte-range we can read (or too big to bother): ignored, or refused as unsatisfiable.
        if r.status == 416:
            check_raw_error(r, 416)
            return
        assert r.status in (200, 206), (header, r.status)
        if r.status == 200:
            assert r.body == BLOB, header
        return
    first, last = span
    if first is None:
        assert last is not None
        want: tuple[int, int] | None = (max(0, size - last), size - 1) if last > 0 else None
    elif last is not None and last < first:
        assert r.status in (200, 416), (header, r.status)  # RFC 9110: invalid, so ignored (or refused)
        if r.status == 200:
            assert r.body == BLOB
        return
    else:
        want = (first, min(size - 1, last if last is not None else size - 1)) if first < size else None
    if want is None:
        check_raw_error(r, 416)
        assert r.headers.get("content-range") == f"bytes */{size}", r.headers
        return
    assert r.status == 206, (header, r.status, r.body[:100])
    assert r.headers["content-range"] == f"bytes {want[0]}-{want[1]}/{size}"
    assert r.body == BLOB[want[0] : want[1] + 1]


# -- Content-Length that lies ----------------------------------------------------------------------------

LIE_KINDS = [
    "single POST",
    "PATCH",
    "closing PUT",
    "manifest PUT",
    "chunked PATCH",
    "chunked PATCH, bad framing",
]


def _chunked(data: bytes, sizes: list[int]) -> bytes:
    """``data`` in Transfer-Encoding: chunked framing, without the last (zero) chunk."""
    out, at = b"", 0
    for size in [*sizes, len(data)]:
        piece = data[at : at + max(1, size)]
        if piece:
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        at += len(piece)
    return out


def _wait_for_session(sandbox: Sandbox, location: str, low: int, high: int) -> int:
    """The session's offset once the aborted writer let go of it (it must lie in ``low..high``)."""
    time.sleep(0.1)  # the server notices the lost connection within milliseconds
    deadline = time.monotonic() + 60
    while True:
        # An empty PATCH takes the writer lock; 416 "another request is writing" means not yet.
        probe = sandbox.client.patch(location, content=b"")
        if probe.status_code != 416 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert probe.status_code == 202, (probe.status_code, probe.text)
    offset = sandbox.status(location)
    assert low <= offset <= high, ("the session holds bytes nobody sent", offset, low, high)
    return offset


@HOSTILE
@given(st.sampled_from(LIE_KINDS), st.integers(1, 200_000), st.data())
def test_bodies_shorter_than_content_length_publish_nothing(
    sandbox: Sandbox, kind: str, declared: int, data: st.DataObject
) -> None:
    count("short bodies")
    sent = data.draw(st.integers(0, declared - 1), label="bytes sent")
    body = os.urandom(declared)
    if kind == "manifest PUT":
        # A manifest padded with spaces: a cut that keeps the JSON whole must still not be stored.
        manifest = _encode(_image(annotations={"n": uuid.uuid4().hex}))
        body = manifest + b" " * max(0, declared - len(manifest))
        declared = len(body)
        sent = min(sent, declared - 1)
        tag = f"short-{uuid.uuid4().hex[:12]}"
        head = request_head(
            "PUT", f"/v2/{MANIFEST_REPO}/manifests/{tag}", sandbox.port,
            {"Content-Type": OCI_MANIFEST, "Content-Length": str(declared)},
        )  # fmt: skip
        send_raw(sandbox.port, head + body[:sent], close_early=True)
        time.sleep(0.05)
        r = sandbox.client.get(f"/v2/{MANIFEST_REPO}/manifests/{tag}")
        assert r.status_code == 404, ("a manifest cut short was stored", sent, declared)
        return
    repo = f"hostile/short-{uuid.uuid4().hex[:12]}"  # fresh: a blob there can only come from this upload
    if kind == "single POST":
        digest = digest_of(body)
        target = f"/v2/{repo}/blobs/uploads/?digest={digest}"
        send_raw(sandbox.port, request_head("POST", target, sandbox.port, {"Content-Length": str(declared)})
                 + body[:sent], close_early=True)  # fmt: skip
        time.sleep(0.05)
        for d in (digest, digest_of(body[:sent])):
            assert sandbox.client.head(f"/v2/{repo}/blobs/{d}").status_code == 404
        return
    prefix = os.urandom(data.draw(st.integers(0, 4), label="prefix"))
    location = sandbox.session_with(repo, prefix)
    headers = {"Content-Length": str(declared)}
    payload = body[:sent]
    if kind.startswith("chunked"):
        headers = {"Transfer-Encoding": "chunked"}
        payload = _chunked(payload, data.draw(st.lists(st.integers(1, 70_000), max_size=4), label="chunks"))
        if kind.endswith("bad framing"):
            payload += data.draw(st.sampled_from([b"ZZ\r\n", b"-1\r\n", b"5\r\nabcdefgh\r\n", b"\r\n\r\n"]))
    elif data.draw(st.booleans(), label="with Content-Range"):
        headers["Content-Range"] = f"{len(prefix)}-{len(prefix) + declared - 1}"
    target = f"{location}?digest={digest_of(prefix + body)}" if kind == "closing PUT" else location
    method = "PUT" if kind == "closing PUT" else "PATCH"
    send_raw(sandbox.port, request_head(method, target, sandbox.port, headers) + payload, close_early=True)
    offset = _wait_for_session(sandbox, location, len(prefix), len(prefix) + sent)
    assert sandbox.client.head(f"/v2/{repo}/blobs/{digest_of(prefix + body)}").status_code == 404
    # Whatever the session kept is a prefix of what was sent: the upload goes on from there.
    staged = prefix + body[: offset - len(prefix)]
    sandbox.finish(location, repo, staged)


def _outcome_of_long_body(answer: bytes, success: int) -> bool:
    """Whether the request with the over-long body was carried out (it must be all or nothing)."""
    statuses = status_lines(answer)
    assert all(s < 500 for s in statuses), answer[:500]
    first = first_response(answer)
    if first is None:
        return False
    if first.status == success:
        return True
    assert 400 <= first.status < 500, answer[:300]
    if first.headers.get("content-type", "").startswith("application/json"):
        code = error_doc(first.status, first.headers["content-type"], first.body)["errors"][0]["code"]
        assert code not in ("DIGEST_INVALID", "SIZE_INVALID", "MANIFEST_INVALID"), (
            "the bytes after Content-Length were read as part of the body",
            first.body[:300],
        )
    return False


@HOSTILE
@given(
    st.sampled_from(["single POST", "PATCH", "manifest PUT"]),
    st.integers(0, 50_000),
    st.binary(min_size=1, max_size=2000),
    st.booleans(),
)
def test_bodies_longer_than_content_length_are_cut_at_content_length(
    sandbox: Sandbox, kind: str, declared: int, extra: bytes, keep_alive: bool
) -> None:
    count("long bodies")
    body = os.urandom(declared)
    port = sandbox.port

    def head(method: str, target: str, headers: dict[str, str]) -> bytes:
        data = request_head(method, target, port, {**headers, "Content-Length": str(len(body))})
        return data.replace(b"Connection: close\r\n", b"") if keep_alive else data

    if kind == "manifest PUT":
        manifest = _encode(_image(annotations={"n": uuid.uuid4().hex}))
        body = manifest + b" " * (declared % 300)
        tag = f"long-{uuid.uuid4().hex[:12]}"
        request = head("PUT", f"/v2/{MANIFEST_REPO}/manifests/{tag}", {"Content-Type": OCI_MANIFEST})
        answer = send_raw(port, request + body + extra, timeout=5)
        done = _outcome_of_long_body(answer, 201)
        r = sandbox.client.get(f"/v2/{MANIFEST_REPO}/manifests/{tag}")
        if done:
            assert r.status_code == 200 and r.content == body
        else:
            assert r.status_code in (200, 404)
            if r.status_code == 200:
                assert r.content == body, "stored something other than the declared bytes"
        return
    if kind == "single POST":
        digest = digest_of(body)
        request = head("POST", f"/v2/{BLOB_REPO}/blobs/uploads/?digest={digest}", {})
        answer = send_raw(port, request + body + extra, timeout=5)
        done = _outcome_of_long_body(answer, 201)
        got = sandbox.client.get(f"/v2/{BLOB_REPO}/blobs/{digest}")
        if done:
            assert got.status_code == 200 and got.content == body
        assert sandbox.client.head(f"/v2/{BLOB_REPO}/blobs/{digest_of(body + extra)}").status_code == 404
        return
    location = sandbox.session_with(CHUNK_REPO, b"")
    answer = send_raw(port, head("PATCH", location, {}) + body + extra, timeout=5)
    done = _outcome_of_long_body(answer, 202)
    offset = _wait_for_session(sandbox, location, 0, len(body))
    assert offset in ((len(body),) if done else (0, len(body))), (offset, len(body))
    sandbox.finish(location, CHUNK_REPO, body[:offset])


@pytest.mark.parametrize("keep_alive", [False, True])
def test_an_over_long_body_is_carried_out_or_refused(sandbox: Sandbox, keep_alive: bool) -> None:
    """Bytes past Content-Length that are no request: the request is done, or refused with a 4xx.

    The bytes after the body are parsed as the next request; aiohttp's parser answers that one
    itself, before dockyard sees it, with a plain-text 400. The spec allows a 4xx body in any
    format (only a JSON one must have the errors shape), and nothing is stored half-written."""
    count("long bodies")
    body = os.urandom(1000)
    repo = f"hostile/long-{uuid.uuid4().hex[:12]}"
    head = request_head(
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={digest_of(body)}",
        sandbox.port,
        {"Content-Length": "1000"},
    )
    if keep_alive:
        head = head.replace(b"Connection: close\r\n", b"")
    first = first_response(send_raw(sandbox.port, head + body + b"GARBAGE", timeout=5))
    assert first is not None, "no answer at all"
    if first.status == 201:
        assert sandbox.client.get(f"/v2/{repo}/blobs/{digest_of(body)}").content == body
    elif "json" in (first.headers.get("content-type") or ""):
        error_doc(first.status, first.headers.get("content-type"), first.body)
    else:
        assert 400 <= first.status < 500, first.status
        blob = sandbox.client.get(f"/v2/{repo}/blobs/{digest_of(body)}")
        assert blob.status_code == 404 or blob.content == body


# -- manifests ---------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["\ud800", "\x00", "a" * 300, OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, UNKNOWN_DIGEST, 2]),
)  # fmt: skip
_keys = st.one_of(
    st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "annotations",
                     "artifactType", "digest", "size", "urls"]),
    st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)


def _push_manifest(
    sandbox: Sandbox, body: bytes, content_type: str | None, reference: str | None = None
) -> RawResponse:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    ref = reference or f"t{uuid.uuid4().hex[:16]}"
    return sandbox.raw("PUT", f"/v2/{MANIFEST_REPO}/manifests/{ref}", headers, body)


def _stored_or_refused(sandbox: Sandbox, r: RawResponse, body: bytes, codes: set[str] | None = None) -> bool:
    """A manifest push is stored byte for byte, or refused with a spec error; never anything else."""
    if r.status == 201:
        digest = r.headers["docker-content-digest"]
        assert digest == digest_of(body)
        got = sandbox.client.get(f"/v2/{MANIFEST_REPO}/manifests/{digest}")
        assert got.status_code == 200 and got.content == body
        return True
    check_raw_error(r, 400, codes or {"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN"})
    return False


CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, "application/json", "",
                     "application/vnd.docker.distribution.manifest.v1+prettyjws", "text/plain",
                     OCI_MANIFEST.upper(), OCI_MANIFEST + "; charset=utf-8", "*/*"]),
)  # fmt: skip


@HOSTILE
@given(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)), CONTENT_TYPES)
def test_bytes_that_are_not_json_are_manifest_invalid(
    sandbox: Sandbox, body: bytes, content_type: str | None
) -> None:
    count("manifest bodies: arbitrary bytes")
    try:
        json.loads(body)
        is_json = True
    except ValueError:
        is_json = False
    r = _push_manifest(sandbox, body, content_type)
    if not is_json:
        check_raw_error(r, 400, "MANIFEST_INVALID")
    else:
        _stored_or_refused(sandbox, r, body)


@HOSTILE
@given(json_values, CONTENT_TYPES)
def test_arbitrary_json_is_stored_exactly_or_refused(
    sandbox: Sandbox, doc: Any, content_type: str | None
) -> None:
    count("manifest bodies: arbitrary JSON")
    body = json.dumps(doc).encode()
    _stored_or_refused(sandbox, _push_manifest(sandbox, body, content_type), body)


def _set_at(doc: Any, path: list[str | int], value: Any, delete: bool) -> None:
    target = doc
    for step in path[:-1]:
        target = target[step]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value


MUTATION_PATHS: list[list[str | int]] = [
    ["schemaVersion"], ["mediaType"], ["config"], ["config", "mediaType"], ["config", "digest"],
    ["config", "size"], ["layers"], ["layers", 0], ["layers", 0, "digest"], ["layers", 0, "size"],
    ["layers", 0, "mediaType"], ["layers", 0, "urls"], ["layers", 0, "annotations"], ["annotations"],
    ["artifactType"], ["subject"], ["manifests"], ["config", "artifactType"],
]  # fmt: skip


@HOSTILE
@given(
    st.lists(st.tuples(st.sampled_from(MUTATION_PATHS), json_values, st.booleans()), min_size=1, max_size=3),
    CONTENT_TYPES,
)
def test_mutated_manifests_are_stored_exactly_or_refused(
    sandbox: Sandbox, mutations: list[tuple[list[str | int], Any, bool]], content_type: str | None
) -> None:
    count("manifest bodies: mutated")
    doc = _image(annotations={"k": "v"})
    for path, value, delete in mutations:
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set_at(doc, path, value, delete)
    body = _encode(doc)
    _stored_or_refused(sandbox, _push_manifest(sandbox, body, content_type), body)


@HOSTILE
@given(st.text(min_size=1, max_size=80), st.one_of(st.none(), st.text(max_size=80), CONTENT_TYPES))
def test_media_types_that_do_not_name_a_manifest_are_manifest_invalid(
    sandbox: Sandbox, declared: str, header: str | None
) -> None:
    count("manifest media types")
    doc = _image()
    doc["mediaType"] = declared
    body = _encode(doc)
    header = (
        _header_safe(header.encode("latin-1", "replace").decode("latin-1")) if header is not None else None
    )
    r = _push_manifest(sandbox, body, header)
    header_type = (header or "").split(";")[0].strip().lower()
    generic = header_type in ("", "application/json", "application/octet-stream", "*/*")
    if declared == OCI_MANIFEST and (generic or header_type == declared):
        assert _stored_or_refused(sandbox, r, body), (declared, header)
    else:
        check_raw_error(r, 400, "MANIFEST_INVALID")


def test_an_empty_media_type_is_manifest_invalid(sandbox: Sandbox) -> None:
    """image-spec: mediaType, when used, MUST be the manifest's media type; "", " " and 0 are not."""
    for declared in ["", " ", 0, []]:
        count("manifest media types")
        doc = _image(annotations={"n": uuid.uuid4().hex})
        doc["mediaType"] = declared
        r = _push_manifest(sandbox, _encode(doc), OCI_MANIFEST)
        assert r.status == 400, (declared, r.status, "stored a manifest whose mediaType is not a media type")
        check_raw_error(r, 400, "MANIFEST_INVALID")


STRING_FIELDS: list[list[str | int]] = [
    ["artifactType"], ["config", "mediaType"], ["config", "artifactType"], ["layers", 0, "mediaType"],
    ["layers", 0, "artifactType"], ["layers", 0, "urls", 0], ["annotations", "k"],
    ["layers", 0, "annotations", "k"], ["subject", "mediaType"], ["subject", "artifactType"],
    ["subject", "annotations", "k"],
]  # fmt: skip
ODD_CHARACTERS = ["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "\uffff", "\U0010ffff", "é", "a", "/", "\n"]
odd_strings = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(ODD_CHARACTERS), min_size=1, max_size=6).map("".join),
    st.sampled_from(["a" * 256, "a" * 5000]),
)


@HOSTILE
@given(st.sampled_from(STRING_FIELDS), odd_strings, st.booleans())
@example(["artifactType"], "\ud800", False)
@example(["config", "mediaType"], "x\udfff", False)
def test_strings_of_any_kind_in_manifest_fields_are_stored_exactly_or_refused(
    sandbox: Sandbox, path: list[str | int], value: str, as_key: bool
) -> None:
    """Lone surrogates, NULs, bidi marks, 5000 characters: a 201 (bytes kept) or MANIFEST_INVALID."""
    count("manifest string fields")
    doc = _image(
        annotations={"k": "v"},
        subject={"mediaType": OCI_MANIFEST, "digest": UNKNOWN_DIGEST, "size": 2, "annotations": {"k": "v"}},
    )
    doc["layers"][0].update(urls=["https://example.invalid/x"], annotations={"k": "v"})
    container: Any = doc
    for step in path[:-1]:
        container = container[step]
    if as_key and isinstance(container, dict) and path[-1] == "k":
        container[value] = container.pop("k")  # the odd string as an annotation key
    else:
        container[path[-1]] = value
    body = _encode(doc)
    _stored_or_refused(sandbox, _push_manifest(sandbox, body, OCI_MANIFEST), body, {"MANIFEST_INVALID"})


@HOSTILE
@given(st.sampled_from(["config", "layer"]), st.integers(-3, 10**6).filter(lambda d: d != 0))
def test_descriptor_sizes_that_lie_about_the_blob_are_manifest_invalid(
    sandbox: Sandbox, which: str, delta: int
) -> None:
    count("descriptor sizes that lie")
    doc = _image(annotations={"n": uuid.uuid4().hex})
    target = doc["config"] if which == "config" else doc["layers"][0]
    target["size"] = max(0, target["size"] + delta)
    if target["size"] == len(CONFIG if which == "config" else LAYER):
        target["size"] += 1
    check_raw_error(_push_manifest(sandbox, _encode(doc), OCI_MANIFEST), 400, "MANIFEST_INVALID")


@HOSTILE
@given(
    st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "digest", "size", "annotations"]),
    st.booleans(),
)
def test_duplicate_keys_are_manifest_invalid(sandbox: Sandbox, key: str, same_value: bool) -> None:
    count("duplicate keys")
    body = _encode(_image(annotations={"n": uuid.uuid4().hex})).decode()
    values = {
        "schemaVersion": "2",
        "mediaType": json.dumps(OCI_INDEX),
        "config": json.dumps(descriptor(OCI_CONFIG, b"x")),
        "layers": "[]",
        "digest": json.dumps(UNKNOWN_DIGEST),
        "size": "1",
        "annotations": '{"a": "b"}',
    }
    needle = f'"{key}": '
    at = body.index(needle)
    end = body.index("\n", at)
    original = body[at + len(needle) : end].rstrip(",")
    duplicate = f"{needle}{original if same_value else values[key]},\n"
    if key in ("digest", "size"):  # inside the config descriptor: duplicate it right there
        text = body[:at] + duplicate + body[at:]
    else:
        text = body.replace("{\n", "{\n" + duplicate, 1)
    r = _push_manifest(sandbox, text.encode(), OCI_MANIFEST)
    check_raw_error(r, 400, "MANIFEST_INVALID")


@settings(HOSTILE, max_examples=12)
@given(st.sampled_from(["array", "object", "in a valid manifest"]), st.integers(10, 300_000))
def test_deeply_nested_json_is_refused_or_stored_exactly(sandbox: Sandbox, shape: str, depth: int) -> None:
    count("deeply nested manifests")
    if shape == "array":
        body = b"[" * depth + b"]" * depth
    elif shape == "object":
        body = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        doc = _encode(_image(annotations={"n": uuid.uuid4().hex}))
        body = doc[:-2] + b',\n "deep": ' + b"[" * depth + b"]" * depth + b"\n}"
    r = _push_manifest(sandbox, body, OCI_MANIFEST)
    if shape == "in a valid manifest":
        _stored_or_refused(sandbox, r, body, {"MANIFEST_INVALID"})
    else:
        check_raw_error(r, 400, "MANIFEST_INVALID")


def _padded_manifest(size: int) -> bytes:
    doc = _image(annotations={"pad": ""})
    base = len(_encode(doc))
    doc["annotations"]["pad"] = "p" * (size - base)
    body = _encode(doc)
    assert len(body) == size
    return body


def test_manifests_over_the_size_limit_are_413_and_at_the_limit_are_stored(sandbox: Sandbox) -> None:
    client = sandbox.client
    at_limit = _padded_manifest(MANIFEST_LIMIT)
    over = _padded_manifest(MANIFEST_LIMIT + 1)
    url = f"/v2/{MANIFEST_REPO}/manifests/"
    headers = {"Content-Type": OCI_MANIFEST}
    big = b"[" * (8 * 1024 * 1024)
    bodies: list[tuple[str, bytes | Iterator[bytes]]] = [
        ("over, with Content-Length", over),
        ("over, chunked", iter([over[:MANIFEST_LIMIT], over[MANIFEST_LIMIT:]])),
        ("8 MiB chunked", iter([big[i : i + 65536] for i in range(0, len(big), 65536)])),
    ]
    cases: list[tuple[str, httpx.Response]] = []
    for label, content in bodies:
        count("huge manifests")
        cases.append((label, client.put(url + "over", content=content, headers=headers)))
    for label, r in cases:
        assert r.status_code == 413, (label, r.status_code, r.text[:200])
        doc = error_doc(r.status_code, r.headers.get("content-type"), r.content)
        assert doc["errors"][0]["code"] in ("SIZE_INVALID", "MANIFEST_INVALID"), (label, doc)
    count("huge manifests")
    # A Content-Length of a terabyte, and a few bytes: refused at once, without waiting for the rest.
    head = request_head(
        "PUT", url + "over", sandbox.port, {"Content-Type": OCI_MANIFEST, "Content-Length": str(10**12)}
    )
    answer = send_raw(sandbox.port, head + b"{", timeout=10)
    first = first_response(answer)
    assert first is not None, "no answer to a manifest that declares a terabyte"
    check_raw_error(first, 413)
    assert client.get(url + "over").status_code == 404
    count("huge manifests")
    r = client.put(url + "at-limit", content=at_limit, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, (r.status_code, r.text[:200])
    assert client.get(url + "at-limit").content == at_limit


# -- pagination ---------------------------------------------------------------------------------------------

_n_values = st.one_of(
    st.integers(-(10**13), 10**13).map(str),
    st.sampled_from(
        ["-1", "0", str(10**12), str(10**30), "abc", "1e3", " 5", "+5", "05", "", "0x10", "1.0", "٣", "5 "]
    ),
    st.text(max_size=6),
)
_last_values = st.one_of(
    st.none(),
    st.sampled_from(TAGS),
    st.sampled_from(["", "~", "zzzzzzzzz", "\U0010ffff", "0", "a" * 300, "Z", "z" * 129]),
    st.text(max_size=12),
)


def _page_size(n: str | None) -> int | None:
    """What a registry must do with ``n``: a page size, or None when it may refuse the value."""
    if n is None or n == "":
        return 10_000
    if re.fullmatch(r"[0-9]+", n):
        return min(int(n), 10_000)
    return None


def _check_page(r: httpx.Response, everything: list[str], key: str, n: str | None, last: str | None) -> None:
    size = _page_size(n)
    if size is None or (n is not None and len(n.lstrip("0")) > 18):
        if r.status_code == 400:
            error_doc(r.status_code, r.headers.get("content-type"), r.content)
            return
        assert size is not None, (n, r.status_code, r.text[:200])
    assert r.status_code == 200, (n, last, r.status_code, r.text[:200])
    items = r.json()[key]
    after = [t for t in everything if not last or t > last]
    assert items == after[:size], (n, last, items)
    if r.headers.get("link"):
        assert size and len(after) > size, ("Link on the last page", n, last)
        assert re.fullmatch(r'<[^>]+>; rel="next"', r.headers["link"]), r.headers["link"]
    else:
        assert size == 0 or len(after) <= size, ("no Link though more remain", n, last)


@HOSTILE
@given(st.one_of(st.none(), _n_values), _last_values)
def test_tag_list_pagination_parameters(sandbox: Sandbox, n: str | None, last: str | None) -> None:
    count("pagination parameters")
    params = {k: v for k, v in (("n", n), ("last", last)) if v is not None}
    r = sandbox.client.get(f"/v2/{TAGS_REPO}/tags/list", params=params)
    _check_page(r, sorted(TAGS), "tags", n, last)


@HOSTILE
@given(st.one_of(st.none(), _n_values), _last_values)
def test_catalog_pagination_parameters(sandbox: Sandbox, n: str | None, last: str | None) -> None:
    count("pagination parameters")
    params = {k: v for k, v in (("n", n), ("last", last)) if v is not None}
    r = sandbox.client.get("/v2/_catalog", params=params)
    size = _page_size(n)
    if r.status_code == 400:
        assert size is None or len((n or "").lstrip("0")) > 18, (n, r.text[:200])
        error_doc(400, r.headers.get("content-type"), r.content)
        return
    assert r.status_code == 200 and size is not None, (n, r.status_code)
    names = r.json()["repositories"]
    assert names == sorted(names) and len(names) <= size
    assert all(name > last for name in names) if last else True


PRE_ENCODED_FILTERS = ["%ED%A0%80", "%00", "%ff", "%", "%zz"]  # sent as they are: invalid UTF-8 and escapes


@HOSTILE
@given(st.one_of(st.text(max_size=40), st.sampled_from([*PRE_ENCODED_FILTERS, "a" * 5000])))
def test_hostile_artifact_type_filters_on_referrers(sandbox: Sandbox, artifact_type: str) -> None:
    count("referrers filters")
    wire = artifact_type if artifact_type in PRE_ENCODED_FILTERS else quote(artifact_type, safe="")
    nobody = digest_of(b"a subject no manifest of this suite refers to")
    r = sandbox.raw("GET", f"/v2/{MANIFEST_REPO}/referrers/{nobody}?artifactType={wire}")
    assert r.status == 200, (r.status, r.body[:200])
    assert r.json()["manifests"] == []


# -- afterwards: nothing outside the data directory, nothing damaged ----------------------------------


def test_zz_nothing_was_written_outside_the_data_directory_and_fsck_is_clean(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Runs last in this module: the whole sandbox holds only the layout, and fsck finds no damage."""
    STATS["hostile requests sent (raw sockets)"] += len(sandbox.responses)
    outer = sandbox.outer
    assert sorted(p.name for p in outer.iterdir()) == ["cwd", "root", "sibling"]
    assert list((outer / "cwd").iterdir()) == [], "the server wrote into its working directory"
    assert [p.name for p in (outer / "sibling").iterdir()] == ["sentinel"]
    root_entries = sorted(p.name for p in (outer / "root").iterdir())
    assert root_entries[0] == "data" and all(re.fullmatch(r"dockyard-\d+\.log", n) for n in root_entries[1:])
    assert unexpected_files(sandbox.data_dir) == []
    top = {p.name for p in sandbox.data_dir.iterdir()}
    assert top <= {"blobs", "uploads", "tmp", "locks", "metadata.db", "metadata.db-wal", "metadata.db-shm"}, (
        top
    )
    searched: list[str] = []
    for place, depth in [
        (outer, 12), (tmp_path_factory.getbasetemp(), 3), (Path("/tmp"), 2), (Path.cwd(), 1),
        (Path.home(), 0), (Path("/"), 0),
    ]:  # fmt: skip
        searched += _marked_paths(place, depth)
    assert searched == [], f"hostile names reached the filesystem: {searched}"
    sandbox.server.stop()
    code, report = run_fsck(sandbox.data_dir)
    assert report["clean"] is True and code == 0, report
    assert report["orphan_staging"] == [] and report["sessions_without_bytes"] == [], report
    assert list((sandbox.data_dir / "tmp").iterdir()) == []


def test_zz_the_server_logged_no_unhandled_error(sandbox: Sandbox) -> None:
    """Every hostile request above was answered on purpose: the log holds no unhandled exception."""
    sandbox.server.stop()
    errors = server_errors(sandbox.server.log(), ignore_startup_race=True)  # own test: test_concurrency
    assert errors == [], f"{len(errors)} unhandled error(s) logged:\n" + "\n".join(errors[:20])


def test_a_malformed_request_is_one_line_in_the_log_not_an_error_with_a_traceback(
    tmp_path: Path,
) -> None:
    server = DockyardServer(tmp_path / "data").start()
    try:
        for raw in (
            b"GET /v2/\x7fbad HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nBad Header\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(raw)
                assert sock.recv(100).startswith(b"HTTP/1.0 400")
        deadline = time.monotonic() + 60
        while server.log().count("malformed request (400 answered)") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log()
    finally:
        server.stop()
    assert log.count("malformed request (400 answered)") == 2, log
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "\\x7f" in log  # the offending bytes, escaped
