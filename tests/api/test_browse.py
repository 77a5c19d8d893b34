"""The browsing pages (README "Browsing"): HTML rendered from what was pushed over the API.

Content goes in over the Distribution API; the pages are read back as HTML, parsed with the
standard library, and checked for what a person sees and can click: tags, digests, sizes,
platforms, referrers, pagination, escaping, errors as pages, and the security headers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    descriptor,
    digest_of,
    dumps,
    push_blob,
    push_image,
    put_manifest,
)
from tests.support.clock import MovableClock
from tests.support.html_page import Page, assert_page_headers
from tests.support.server import DockyardServer

SCRIPT = "<script>alert('boo')</script>"
SBOM = "application/spdx+json"
ODD_TAG = "_Odd.Tag-1__x"


@dataclass
class Content:
    """What ``pushed`` put in a repository."""

    repo: str
    image: Image  # tag ODD_TAG and "v1": a config, two layers (one annotated with SCRIPT)
    index: str  # tag "multi": two children, linux/amd64 and linux/arm64/v8
    children: list[str]
    artifact: str  # an SBOM whose subject is the image
    image_total: int  # config + layers


def push(client: httpx.Client, repo: str, reference: str, doc: dict[str, Any], media_type: str) -> str:
    body = dumps(doc)
    r = put_manifest(client, repo, reference, body, media_type)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest_of(body)


def push_content(client: httpx.Client, repo: str) -> Content:
    config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()
    layers = [f"first layer of {repo}".encode() * 40, f"second layer of {repo}".encode() * 3]
    for blob in (config, *layers):
        push_blob(client, repo, blob)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(OCI_LAYER, layers[0], annotations={"org.example.note": SCRIPT}),
            descriptor(OCI_LAYER, layers[1]),
        ],
        "annotations": {"org.opencontainers.image.title": f"title {SCRIPT}"},
    }
    body = dumps(doc)
    digest = push(client, repo, ODD_TAG, doc, OCI_MANIFEST)
    r = put_manifest(client, repo, "v1", body, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    image = Image(body, digest, OCI_MANIFEST, config, layers)

    children = [push_image(client, repo, seed=arch) for arch in ("amd64", "arm64")]
    platforms = [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**descriptor(OCI_MANIFEST, child.manifest), "platform": platform}
            for child, platform in zip(children, platforms, strict=True)
        ],
    }
    index = push(client, repo, "multi", index_doc, OCI_INDEX)

    push_blob(client, repo, b"{}")
    sbom_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM,
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor(OCI_EMPTY, b"{}")],
        "subject": descriptor(OCI_MANIFEST, body),
        "annotations": {"org.example.by": SCRIPT},
    }
    artifact = push(client, repo, digest_of(dumps(sbom_doc)), sbom_doc, OCI_MANIFEST)
    total = len(config) + sum(len(layer) for layer in layers)
    return Content(repo, image, index, [c.digest for c in children], artifact, total)


@pytest.fixture
def pushed(client: httpx.Client, repo: str) -> Content:
    return push_content(client, f"{repo}/deep/er")


def get_page(client: httpx.Client, path: str, status: int = 200) -> Page:
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text[:500])
    assert_page_headers(r)
    return Page.of(r)


def ui_repo(name: str) -> str:
    return f"/ui/r/{name}"


def ui_manifest(name: str, reference: str) -> str:
    return f"/ui/r/{name}/manifests/{reference}"


# -- the repository list ---------------------------------------------------------------------------


def test_root_and_bare_ui_redirect_to_the_repository_list(client: httpx.Client) -> None:
    for path in ("/", "/ui"):
        r = client.get(path, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (302, "/ui/"), path
    assert Page.of(client.get("/", follow_redirects=True)).h1 == "Repositories"


def test_repository_list_links_each_repository_and_pages_on_with_next(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server()
    names = ["zeta", "alpha/one", "alpha", "team/app/web", "b-c"]
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        for name in names:
            push_blob(c, name, name.encode())
        everything = get_page(c, "/ui/")
        assert [cell.text for cell in everything.table().column("Repository")] == sorted(names)
        assert [cell.hrefs for cell in everything.table().column("Repository")] == [
            [ui_repo(n)] for n in sorted(names)
        ]
        assert everything.next_link is None

        seen: list[str] = []
        path: str | None = "/ui/?n=2"
        pages = 0
        while path is not None:
            page = get_page(c, path)
            rows = [cell.text for cell in page.table().column("Repository")]
            assert len(rows) == 2 or page.next_link is None
            seen += rows
            path = page.next_link
            if path is not None:
                query = parse_qs(urlsplit(path).query)
                assert urlsplit(path).path == "/ui/" and query == {"n": ["2"], "last": [rows[-1]]}, path
            pages += 1
        assert (seen, pages) == (sorted(names), 3)

        assert get_page(c, "/ui/?n=2&last=zeta").text.count("No repositories") == 1


def test_repository_list_on_the_shared_server_includes_a_new_repository(
    client: httpx.Client, pushed: Content
) -> None:
    page = get_page(client, f"/ui/?n=1&last={pushed.repo[:-1]}")
    assert page.table().column("Repository")[0].hrefs == [ui_repo(pushed.repo)]


def test_repository_list_shows_tags_last_push_size_and_totals_and_sorts_by_last_push(
    start_server: Callable[..., DockyardServer], clock: MovableClock
) -> None:
    server = start_server(env=clock.env)
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        old = push_image(c, "team/old", "v1", seed="old")
        clock.advance(3 * 86400)
        new = push_image(c, "team/new", "v1", seed="new")
        assert put_manifest(c, "team/new", "v2", new.manifest, new.media_type).status_code == 201
        push_blob(c, "empty", b"no manifest here")

        page = get_page(c, "/ui/")
        rows = {r["Repository"].text: r for r in page.table().records()}
        assert list(rows) == ["empty", "team/new", "team/old"]
        tag_counts = [rows[n]["Tags"].text for n in ("team/new", "team/old", "empty")]
        assert tag_counts == ["2", "1", "0"]
        assert rows["team/old"]["Last push"].text == "3 days ago"
        assert rows["team/new"]["Last push"].text == "just now"
        assert rows["empty"]["Last push"].text == "never"
        image_bytes = len(old.manifest) + len(old.config) + sum(len(x) for x in old.layers)
        assert rows["team/old"]["Size"].text == f"{image_bytes} B"
        assert page.text.count("3 repositories · 2 manifests") == 1

        by_push = get_page(c, "/ui/?sort=pushed")
        assert [r.text for r in by_push.table().column("Repository")] == ["team/new", "team/old", "empty"]
        paged = get_page(c, "/ui/?sort=pushed&n=1")
        assert [r.text for r in paged.table().column("Repository")] == ["team/new"]
        assert paged.next_link is not None
        assert parse_qs(urlsplit(paged.next_link).query) == {"n": ["1"], "from": ["1"], "sort": ["pushed"]}
        second = get_page(c, paged.next_link)
        assert [r.text for r in second.table().column("Repository")] == ["team/old"]


def test_search_finds_names_containing_the_text_and_pages_on(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        for name in ("web/app", "web/api", "db/postgres", "tools/webhook", "w_b/odd", "wxb/odd"):
            push_blob(c, name, name.encode())
        found = get_page(c, "/ui/?q=web")
        assert [r.text for r in found.table().column("Repository")] == ["tools/webhook", "web/api", "web/app"]
        upper = get_page(c, "/ui/?q=WEB")  # names are lower case
        assert upper.table().column("Repository")[0].text == "tools/webhook"
        literal = get_page(c, "/ui/?q=w_b")  # "_" is no wildcard
        assert [r.text for r in literal.table().column("Repository")] == ["w_b/odd"]
        assert "No repositories match." in get_page(c, "/ui/?q=nothing").text
        first = get_page(c, "/ui/?q=web&n=2")
        assert [r.text for r in first.table().column("Repository")] == ["tools/webhook", "web/api"]
        assert first.next_link is not None
        query = parse_qs(urlsplit(first.next_link).query)
        assert query == {"n": ["2"], "last": ["web/api"], "q": ["web"]}
        assert [r.text for r in get_page(c, first.next_link).table().column("Repository")] == ["web/app"]


# -- a repository ----------------------------------------------------------------------------------


def test_repository_page_lists_tags_with_digest_type_and_size_or_platforms(
    client: httpx.Client, pushed: Content
) -> None:
    page = get_page(client, ui_repo(pushed.repo))
    assert page.h1 == pushed.repo
    rows = {r["Tag"].text: r for r in page.table("Tags").records()}
    assert sorted(rows) == sorted([ODD_TAG, "v1", "multi"])  # the artifact has no tag
    host = urlsplit(str(client.base_url)).netloc

    for tag in (ODD_TAG, "v1"):
        row = rows[tag]
        assert row["Tag"].hrefs == [ui_manifest(pushed.repo, tag)]
        short = f"sha256:{pushed.image.digest[7:15]}…"
        assert (row["Digest"].text, row["Digest"].titles, row["Digest"].hrefs) == (
            short,
            [pushed.image.digest],
            [ui_manifest(pushed.repo, pushed.image.digest)],
        )
        assert row["Size or platforms"].text == f"{pushed.image_total / 1024:.1f} KiB"
        assert row["Size or platforms"].titles == [f"{pushed.image_total} B"]
        assert row["Referrers"].text == "1"  # the SBOM
        assert row["Pull"].values == [f"docker pull {host}/{pushed.repo}:{tag}"]
        assert row["Pushed"].text == "just now"
        assert row["Pushed"].titles[0].endswith(" UTC")

    multi = rows["multi"]
    assert (multi["Digest"].titles, multi["Referrers"].text) == ([pushed.index], "0")
    platforms = multi["Size or platforms"]
    assert platforms.hrefs == [ui_manifest(pushed.repo, d) for d in pushed.children]
    assert re.sub(r"\s+", " ", platforms.text).strip() == (
        f"linux/amd64 {pushed.children[0]}linux/arm64/v8 {pushed.children[1]}"
    )


def test_repository_page_sorts_tags_by_last_push_and_by_name(client: httpx.Client, repo: str) -> None:
    for tag in ("old", "middle", "new"):
        push_image(client, repo, tag, seed=tag)
    by_push = [r["Tag"].text for r in get_page(client, ui_repo(repo)).table("Tags").records()]
    assert by_push == ["new", "middle", "old"]
    by_name = get_page(client, f"{ui_repo(repo)}?sort=name")
    assert [r["Tag"].text for r in by_name.table("Tags").records()] == ["middle", "new", "old"]
    assert by_name.link_to(f"{ui_repo(repo)}?sort=pushed").text == "last push"


def test_repository_page_pages_through_tags(client: httpx.Client, repo: str) -> None:
    tags = ["b", "a", "C", "_x", "a.b", "a-b", "v1.0"]
    config = b'{"many": "tags"}'
    push_blob(client, repo, config)
    body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config)})
    r = put_manifest(client, repo, digest_of(body), body, OCI_MANIFEST, tag=tags)
    assert r.status_code == 201, r.text

    for sort in ("name", "pushed"):
        seen: list[str] = []
        path: str | None = f"{ui_repo(repo)}?n=3&sort={sort}"
        while path is not None:
            page = get_page(client, path)
            rows = page.table("Tags").records()
            assert all(row["Digest"].titles == [digest_of(body)] for row in rows)
            assert all(row["Size or platforms"].text == f"{len(config)} B" for row in rows)
            seen += [row["Tag"].text for row in rows]
            path = page.next_link
            if path is not None:
                assert urlsplit(path).path == ui_repo(repo)
                expected = {"n": ["3"], "from": [str(len(seen))]}
                if sort == "name":
                    expected["sort"] = ["name"]
                assert parse_qs(urlsplit(path).query) == expected
        assert sorted(seen) == sorted(tags) and len(seen) == len(tags)
        if sort == "name":
            assert seen == sorted(tags)  # byte order, as the tags list


def test_a_repository_without_tags_says_so(client: httpx.Client, repo: str) -> None:
    push_image(client, repo)  # by digest only
    page = get_page(client, ui_repo(repo))
    assert not page.has_table("Tags") and "No tags." in page.text


# -- a manifest -----------------------------------------------------------------------------------


def test_image_manifest_page_shows_fields_tags_blobs_referrers_and_json(
    client: httpx.Client, pushed: Content
) -> None:
    repo, image = pushed.repo, pushed.image
    page = get_page(client, ui_manifest(repo, ODD_TAG))
    assert page.h1 == f"{repo}:{ODD_TAG}"
    fields = {k: v.text for k, v in page.fields.items()}
    assert page.fields["Digest"].values == [image.digest]
    host = urlsplit(str(client.base_url)).netloc
    assert page.fields["Pull"].values == [f"docker pull {host}/{repo}@{image.digest}"]
    assert fields["Media type"] == OCI_MANIFEST
    assert fields["Size"] == f"{len(image.manifest)} B"
    assert page.fields["Tags"].hrefs == [ui_manifest(repo, ODD_TAG), ui_manifest(repo, "v1")]
    assert "Subject" not in fields

    config = page.table("Config").records()
    assert [(r["Digest"].text, r["Media type"].text, r["Size"].text) for r in config] == [
        (digest_of(image.config), OCI_CONFIG, f"{len(image.config)} B")
    ]
    layers = page.table("Layers").records()
    assert [r["Digest"].hrefs for r in layers] == [[f"/v2/{repo}/blobs/{digest_of(x)}"] for x in image.layers]
    assert layers[0]["Size"].text == f"{len(image.layers[0]) / 1024:.1f} KiB ({len(image.layers[0])} B)"
    assert layers[0]["Annotations"].text == f"org.example.note = {SCRIPT}"
    assert f"({pushed.image_total} B)" in page.table("Layers").section

    # the download links are the API's own blob URLs, and they serve the bytes
    for row, blob in zip([*config, *layers], [image.config, *image.layers], strict=True):
        assert client.get(row["Digest"].hrefs[0]).content == blob

    referrers = page.table("Referrers").records()
    assert [(r["artifactType"].text, r["Digest"].text) for r in referrers] == [(SBOM, pushed.artifact)]
    assert referrers[0]["Digest"].hrefs == [ui_manifest(repo, pushed.artifact)]

    assert json.loads(page.pre[0]) == json.loads(image.manifest)
    assert page.link_to(f"/v2/{repo}/manifests/{image.digest}").text == "manifest bytes"


def test_manifest_page_by_digest_is_the_same_manifest(client: httpx.Client, pushed: Content) -> None:
    by_tag = get_page(client, ui_manifest(pushed.repo, "v1"))
    by_digest = get_page(client, ui_manifest(pushed.repo, pushed.image.digest))
    assert by_digest.h1 == f"{pushed.repo}@{pushed.image.digest}"
    assert by_digest.fields["Digest"].values == by_tag.fields["Digest"].values == [pushed.image.digest]
    assert by_digest.pre == by_tag.pre


def test_index_page_lists_children_with_platforms(client: httpx.Client, pushed: Content) -> None:
    page = get_page(client, ui_manifest(pushed.repo, "multi"))
    assert page.fields["Media type"].text == OCI_INDEX
    children = page.table("Manifests").records()
    assert [(r["Platform"].text, r["Digest"].text) for r in children] == [
        ("linux/amd64", pushed.children[0]),
        ("linux/arm64/v8", pushed.children[1]),
    ]
    assert [r["Digest"].hrefs for r in children] == [[ui_manifest(pushed.repo, d)] for d in pushed.children]
    assert not page.has_table("Config") and not page.has_table("Layers")
    child = get_page(client, children[1]["Digest"].hrefs[0])
    assert child.fields["Digest"].values == [pushed.children[1]]


def test_image_page_shows_the_config_created_platform_command_labels_and_history(
    client: httpx.Client, repo: str
) -> None:
    config = dumps(
        {
            "created": "2026-11-30T12:34:56.123456789Z",
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/server", "--port", "80 80"],
                "Cmd": ["serve"],
                "User": "app",
                "ExposedPorts": {"80/tcp": {}},
                "Labels": {"org.opencontainers.image.source": SCRIPT},
            },
            "history": [
                {"created": "2026-11-30T12:00:00Z", "created_by": "ADD rootfs.tar /"},
                {"created_by": "ENV A=1", "empty_layer": True},
            ],
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )
    layer = b"layer bytes" * 10
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    push(client, repo, "v1", doc, OCI_MANIFEST)
    page = get_page(client, ui_manifest(repo, "v1"))
    image = {k: v.text for k, v in page.fields.items()}
    assert image["Platform"] == "linux/arm64/v8"
    assert page.fields["Created"].titles == ["2026-11-30 12:34:56 UTC"]
    assert image["Runs"] == "/bin/server --port '80 80' serve"
    assert (image["User"], image["Ports"]) == ("app", "80/tcp")
    assert image["Labels"] == f"org.opencontainers.image.source = {SCRIPT}"
    steps = [(r["Step"].text, r["Layer"].text) for r in page.table("History").records()]
    assert steps == [("ADD rootfs.tar /", "layer"), ("ENV A=1", "no layer")]
    assert "<script" not in page.source.lower()


def test_operations_page_lists_collections_and_open_upload_sessions(
    start_server: Callable[..., DockyardServer],
) -> None:
    server = start_server(env={"DOCKYARD_GC__GRACE_SECONDS": "0"})
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        assert "No collection has run yet." in get_page(c, "/ui/operations").text
        image = push_image(c, "ops/app", "v1", seed="ops")
        assert c.delete("/v2/ops/app/manifests/v1").status_code == 202
        command = [sys.executable, "-m", "dockyard", "gc", "--delete-untagged", "--json"]
        collected = subprocess.run(
            [*command, "--data-dir", str(server.data_dir)],
            env={**os.environ, **server.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert collected.returncode == 0, collected.stderr
        freed = json.loads(collected.stdout)["bytes_freed"]
        location = c.post("/v2/ops/app/blobs/uploads/").headers["location"]
        assert c.patch(location, content=b"x" * 1000).status_code == 202

        page = get_page(c, "/ui/operations")
        run = page.table("Garbage collection").records()[0]
        assert (run["Manifests"].text, run["Started"].text) == ("1", "just now")
        shown = [*run["Freed"].titles, run["Freed"].text]
        assert freed >= len(image.manifest) and any(str(freed) in s for s in shown)
        sessions = page.table("Upload sessions").records()
        assert [(s["Repository"].text, s["Session"].text, s["Received"].text) for s in sessions] == [
            ("ops/app", location.rsplit("/", 1)[1], "1000 B")
        ]
        assert page.fields["Open upload sessions"].text == "1"
        assert get_page(c, "/ui/").link_to("/ui/operations").text == "operations"


def test_artifact_page_links_its_subject(client: httpx.Client, pushed: Content) -> None:
    page = get_page(client, ui_manifest(pushed.repo, pushed.artifact))
    assert page.fields["artifactType"].text == SBOM
    assert page.fields["Subject"].hrefs == [ui_manifest(pushed.repo, pushed.image.digest)]
    assert "Tags" not in page.fields
    assert "None." in page.text  # no referrers of its own


def test_everything_from_a_client_is_escaped(client: httpx.Client, pushed: Content) -> None:
    for path in (
        ui_manifest(pushed.repo, "v1"),
        ui_manifest(pushed.repo, pushed.artifact),
        ui_repo(pushed.repo),
    ):
        page = get_page(client, path)
        assert "<script" not in page.source.lower(), path
    image_page = get_page(client, ui_manifest(pushed.repo, "v1"))
    assert "&lt;script&gt;alert(&#x27;boo&#x27;)&lt;/script&gt;" in image_page.source
    assert image_page.fields["Annotations"].text == f"org.opencontainers.image.title = title {SCRIPT}"
    assert SCRIPT in image_page.pre[0]  # the JSON, as text
    artifact_page = get_page(client, ui_manifest(pushed.repo, pushed.artifact))
    assert artifact_page.fields["Annotations"].text == f"org.example.by = {SCRIPT}"


# -- errors -------------------------------------------------------------------------------------------


def test_unknown_repository_and_manifest_are_404_pages(
    client: httpx.Client, pushed: Content, repo: str
) -> None:
    unknown_digest = digest_of(b"nothing like it")
    for path in (
        ui_repo(f"{repo}/never"),
        ui_manifest(f"{repo}/never", "v1"),
        ui_manifest(pushed.repo, "no-such-tag"),
        ui_manifest(pushed.repo, unknown_digest),
        "/ui/r/",
        "/ui/nothing/here",
    ):
        page = get_page(client, path, 404)
        assert page.h1 == "Not found", path
        assert "errors" not in page.source


@pytest.mark.parametrize(
    "path",
    [
        "/ui/r/Upper/Case",
        "/ui/r/a//b",
        "/ui/r/trailing-/manifests/v1",
        "/ui/r/ok/manifests/sha256:short",
        "/ui/r/ok/manifests/md5:" + "0" * 32,
        "/ui/r/ok/manifests/bad!tag",
        "/ui/r/ok/manifests/" + "t" * 200,
        "/ui/?n=lots",
        "/ui/r/ok?n=-1",
    ],
)
def test_malformed_names_references_and_page_sizes_are_400_pages(client: httpx.Client, path: str) -> None:
    page = get_page(client, path, 400)
    assert page.h1 == "Bad request"


def test_api_errors_stay_json(client: httpx.Client, repo: str) -> None:
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert "content-security-policy" not in r.headers


def test_pages_carry_the_security_headers(client: httpx.Client, pushed: Content) -> None:
    for path in ("/ui/", ui_repo(pushed.repo), ui_manifest(pushed.repo, "multi"), ui_repo("no/such/repo")):
        assert_page_headers(client.get(path))


# -- the setting ---------------------------------------------------------------------------------------


def test_ui_off_answers_404_and_leaves_the_api_alone(start_server: Callable[..., DockyardServer]) -> None:
    server = start_server(env={"DOCKYARD_UI": "false"})
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        image = push_image(c, "app", "v1")
        for path in (
            "/",
            "/ui",
            "/ui/",
            "/ui/r/app",
            f"/ui/r/app/manifests/{image.digest}",
            "/ui/r/app/manifests/v1",
        ):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 404, (path, r.status_code)
            assert "text/html" not in r.headers["content-type"], path
        assert c.get("/v2/_catalog").json() == {"repositories": ["app"]}
        assert c.get("/v2/app/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == image.manifest
