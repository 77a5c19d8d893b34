"""A pull-through cache: content pulled through the proxy is the upstream's byte for byte, stays
served when the upstream is gone, follows moved tags after their TTL, and never publishes bytes
that do not match their digest."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.proxy.conftest import blob_file
from tests.support.api_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    api_client,
    assert_error,
    digest_of,
    dumps,
    push_blob,
    push_image,
    put_manifest,
)
from tests.support.clock import MovableClock
from tests.support.server import DockyardServer
from tests.support.services import TEST_BACKEND

filesystem_only = pytest.mark.skipif(
    TEST_BACKEND != "filesystem+sqlite", reason="reads and corrupts blob files in the data directory"
)


def assert_same_manifest(
    through: httpx.Client, up: httpx.Client, repo: str, reference: str
) -> httpx.Response:
    """GET and HEAD through the proxy answer what the upstream answers, body byte for byte."""
    want = up.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    got = through.get(f"/v2/{repo}/manifests/{reference}")
    assert got.status_code == 200, got.text
    assert got.content == want.content
    for header in ("content-type", "docker-content-digest", "content-length"):
        assert got.headers[header] == want.headers[header], header
    head = through.head(f"/v2/{repo}/manifests/{reference}")
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == want.headers["docker-content-digest"]
    return got


def pull_blob(client: httpx.Client, repo: str, digest: str) -> bytes:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert digest_of(r.content) == digest
    assert r.headers["docker-content-digest"] == digest
    return r.content


def test_manifest_by_tag_and_digest_is_the_upstreams_byte_for_byte(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    image = push_image(up, repo, "v1", seed="a")

    by_tag = assert_same_manifest(through, up, repo, "v1")
    assert by_tag.headers["docker-content-digest"] == image.digest
    assert by_tag.content == image.manifest
    assert assert_same_manifest(through, up, repo, image.digest).content == image.manifest


def test_manifest_by_digest_never_seen_as_a_tag_is_fetched_and_verified(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    image = push_image(up, repo, None, seed="by-digest")
    head = through.head(f"/v2/{repo}/manifests/{image.digest}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(image.manifest))
    assert through.get(f"/v2/{repo}/manifests/{image.digest}").content == image.manifest


def test_blobs_are_the_upstreams_byte_for_byte(up: httpx.Client, through: httpx.Client, repo: str) -> None:
    image = push_image(up, repo, "v1", seed="b")
    big = os.urandom(3 * 1024 * 1024 + 17)  # many pieces, an odd tail
    big_digest = push_blob(up, repo, big)

    empty = b""
    push_blob(up, repo, empty)
    for data in (image.config, *image.layers, big, empty):
        assert pull_blob(through, repo, digest_of(data)) == data
        assert pull_blob(through, repo, digest_of(data)) == data  # now from the cache
        head = through.head(f"/v2/{repo}/blobs/{digest_of(data)}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    part = through.get(f"/v2/{repo}/blobs/{big_digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == big[100:200]


def test_head_of_a_blob_not_cached_asks_the_upstream_and_a_range_waits_for_the_whole_blob(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = push_blob(up, repo, data)

    head = through.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["docker-content-digest"] == digest

    part = through.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={len(data) - 10}-"})
    assert part.status_code == 206
    assert part.content == data[-10:]
    assert part.headers["content-range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    assert pull_blob(through, repo, digest) == data


def test_an_index_and_its_children_pull_through(up: httpx.Client, through: httpx.Client, repo: str) -> None:
    amd = push_image(up, repo, None, seed="amd64")
    arm = push_image(up, repo, None, seed="arm64")
    index = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": amd.digest, "size": len(amd.manifest)},
                {"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": len(arm.manifest)},
            ],
        }
    )
    assert put_manifest(up, repo, "multi", index, OCI_INDEX).status_code == 201

    got = assert_same_manifest(through, up, repo, "multi")
    assert got.content == index
    for child in json.loads(got.content)["manifests"]:
        assert_same_manifest(through, up, repo, child["digest"])
    for image in (amd, arm):
        for data in (image.config, *image.layers):
            assert pull_blob(through, repo, digest_of(data)) == data


def test_what_the_upstream_does_not_have_is_unknown(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    push_image(up, repo, "v1", seed="c")
    assert_error(through.get(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    assert_error(through.get(f"/v2/{repo}/manifests/{digest_of(b'nothing')}"), 404, "MANIFEST_UNKNOWN")
    assert_error(through.get(f"/v2/{repo}/blobs/{digest_of(b'nothing')}"), 404, "BLOB_UNKNOWN")
    assert through.head(f"/v2/{repo}/blobs/{digest_of(b'nothing')}").status_code == 404
    assert_error(through.get("/v2/test/never-pushed/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(through.get("/v2/test/never-pushed/tags/list"), 404, "NAME_UNKNOWN")


def test_tags_list_comes_from_the_upstream(up: httpx.Client, through: httpx.Client, repo: str) -> None:
    for tag in ("b", "a", "c"):
        push_image(up, repo, tag, seed=tag)
    r = through.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": ["a", "b", "c"]}  # none pulled yet: the upstream's list
    first = through.get(f"/v2/{repo}/tags/list", params={"n": "2"})
    assert first.json()["tags"] == ["a", "b"]
    assert "last=b" in first.headers["link"]
    assert through.get(f"/v2/{repo}/tags/list", params={"n": "2", "last": "b"}).json()["tags"] == ["c"]


def test_a_blob_cached_for_one_repository_is_linked_in_another_the_upstream_has_it_in(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    data = os.urandom(300_000)
    digest = push_blob(up, repo, data)
    push_blob(up, f"{repo}-other", data)
    assert pull_blob(through, repo, digest) == data
    assert pull_blob(through, f"{repo}-other", digest) == data
    # ...but not in a repository the upstream does not have it in.
    assert_error(through.get(f"/v2/{repo}-third/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_pushes_and_deletes_are_refused_as_unsupported(
    up: httpx.Client, through: httpx.Client, repo: str
) -> None:
    image = push_image(up, repo, "v1", seed="ro")
    assert through.get(f"/v2/{repo}/manifests/v1").status_code == 200
    data = b"a blob pushed to a cache"
    refusals = [
        through.post(f"/v2/{repo}/blobs/uploads/"),
        through.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data),
        through.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest_of(image.config), "from": "x/y"}),
        through.patch(f"/v2/{repo}/blobs/uploads/9b2c5a1e-1111-4222-8333-444455556666", content=data),
        through.put(
            f"/v2/{repo}/blobs/uploads/9b2c5a1e-1111-4222-8333-444455556666?digest={digest_of(data)}"
        ),
        put_manifest(through, repo, "v2", image.manifest, OCI_MANIFEST),
        through.delete(f"/v2/{repo}/manifests/{image.digest}"),
        through.delete(f"/v2/{repo}/manifests/v1"),
        through.delete(f"/v2/{repo}/blobs/{digest_of(image.config)}"),
        through.delete(f"/v2/_dockyard/repositories/{repo}"),
    ]
    for response in refusals:
        assert_error(response, 405, "UNSUPPORTED")
    assert through.get(f"/v2/{repo}/manifests/v1").content == image.manifest


def test_concurrent_pulls_of_a_missing_blob_share_one_download(
    start_server: Callable[..., DockyardServer], start_proxy: Callable[..., DockyardServer], repo: str
) -> None:
    upstream = start_server(workers=1, env={"DOCKYARD_ACCESS_LOG": "true"})
    proxy = start_proxy(upstream, workers=1)
    data = os.urandom(16 * 1024 * 1024)
    with api_client(upstream.url) as up:
        digest = push_blob(up, repo, data)

    def pull(_: int) -> str:
        with api_client(proxy.url) as c, c.stream("GET", f"/v2/{repo}/blobs/{digest}") as r:
            assert r.status_code == 200
            h = hashlib.sha256()
            for piece in r.iter_bytes():
                h.update(piece)
                time.sleep(0.001)  # a client that reads at its own pace
            return "sha256:" + h.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(pull, range(8))) == [digest] * 8
    gets = [line for line in upstream.log().splitlines() if f'"GET /v2/{repo}/blobs/{digest}' in line]
    assert len(gets) == 1, gets


def test_everything_pulled_still_serves_after_the_upstream_stops(
    start_server: Callable[..., DockyardServer], start_proxy: Callable[..., DockyardServer], repo: str
) -> None:
    upstream = start_server(workers=1)
    proxy = start_proxy(upstream, tag_ttl=0, workers=2)  # every tag pull asks the upstream
    with api_client(upstream.url) as up:
        image = push_image(up, repo, "v1", seed="offline")
        other = push_image(up, repo, "v2", seed="not pulled")
    with httpx.Client(base_url=proxy.url, timeout=30.0) as through:
        got = through.get(f"/v2/{repo}/manifests/v1").content
        assert got == image.manifest
        for data in (image.config, *image.layers):
            pull_blob(through, repo, digest_of(data))
        upstream.stop()

        for _ in range(4):  # both workers
            assert through.get(f"/v2/{repo}/manifests/v1").content == image.manifest
            assert through.head(f"/v2/{repo}/manifests/v1").status_code == 200
            assert through.get(f"/v2/{repo}/manifests/{image.digest}").content == image.manifest
            for data in (image.config, *image.layers):
                assert pull_blob(through, repo, digest_of(data)) == data
        assert through.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]  # what is cached

        # What was never pulled cannot be served: a clear error with the spec's JSON body.
        entry = assert_error(through.get(f"/v2/{repo}/manifests/v2"), 503, "MANIFEST_UNKNOWN")
        assert "upstream" in entry["message"]
        assert_error(through.get(f"/v2/{repo}/manifests/{other.digest}"), 503, "MANIFEST_UNKNOWN")
        r = through.get(f"/v2/{repo}/blobs/{digest_of(other.config)}")
        assert_error(r, 503, "BLOB_UNKNOWN")
        assert r.headers["retry-after"]
        assert through.head(f"/v2/{repo}/blobs/{digest_of(other.config)}").status_code == 503
    assert "serving" in proxy.log() and "as cached" in proxy.log()


def test_a_tag_moved_upstream_is_seen_after_the_ttl_and_not_before(
    start_server: Callable[..., DockyardServer],
    start_proxy: Callable[..., DockyardServer],
    repo: str,
    clock: MovableClock,
) -> None:
    """The proxy's clock is moved past the TTL, so "not before" and "after" do not depend on how
    fast this machine answers."""
    ttl = 300.0
    upstream = start_server(workers=1)
    proxy = start_proxy(upstream, tag_ttl=ttl, workers=2, env=clock.env)
    with api_client(upstream.url) as up, api_client(proxy.url) as through:
        first = push_image(up, repo, "latest", seed="first")
        assert through.get(f"/v2/{repo}/manifests/latest").content == first.manifest
        second = push_image(up, repo, "latest", seed="second")

        for _ in range(10):  # inside the TTL (the clock has not moved), on both workers
            fresh = {"Connection": "close"}
            r = through.get(f"/v2/{repo}/manifests/latest", headers=fresh)
            assert r.content == first.manifest
            head = through.head(f"/v2/{repo}/manifests/latest", headers=fresh)
            assert head.headers["docker-content-digest"] == first.digest
        clock.advance(ttl + 1)
        for _ in range(4):
            r = through.get(f"/v2/{repo}/manifests/latest", headers={"Connection": "close"})
            assert r.content == second.manifest
            assert r.headers["docker-content-digest"] == second.digest
        for data in (second.config, *second.layers):
            assert pull_blob(through, repo, digest_of(data)) == data

        # A tag deleted upstream goes from the cache too, once its TTL has passed.
        assert up.delete(f"/v2/{repo}/manifests/latest").status_code == 202
        clock.advance(ttl + 1)
        assert_error(through.get(f"/v2/{repo}/manifests/latest"), 404, "MANIFEST_UNKNOWN")
        assert through.get(f"/v2/{repo}/manifests/{second.digest}").content == second.manifest


@filesystem_only
def test_a_blob_that_does_not_match_its_digest_upstream_is_never_published(
    start_server: Callable[..., DockyardServer], start_proxy: Callable[..., DockyardServer], repo: str
) -> None:
    upstream = start_server(workers=1)
    proxy = start_proxy(upstream, workers=1)
    small = os.urandom(1000)
    big = os.urandom(5 * 1024 * 1024)
    with api_client(upstream.url) as up:
        digests = [push_blob(up, repo, small), push_blob(up, repo, big)]
    for digest in digests:  # same size, other bytes
        path = blob_file(upstream.data_dir, digest)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))

    with httpx.Client(base_url=proxy.url, timeout=30.0) as through:
        # Small enough to be one piece: nothing was sent when the check failed, so a clean error.
        entry = assert_error(through.get(f"/v2/{repo}/blobs/{digests[0]}"), 502, "DIGEST_INVALID")
        assert "upstream" in entry["message"]
        # Streamed: the last piece is held back until the digest verifies; it fails, the
        # connection is cut, and the client sees a short body, never a complete wrong one.
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                through.get(f"/v2/{repo}/blobs/{digests[1]}")
        assert_error(
            through.get(f"/v2/{repo}/blobs/{digests[1]}", headers={"Range": "bytes=0-9"}),
            502,
            "DIGEST_INVALID",
        )
        assert_error(through.get(f"/v2/{repo}/blobs/{digests[0]}"), 502, "DIGEST_INVALID")  # not cached
        for digest in digests:
            assert not blob_file(proxy.data_dir, digest).exists()
    assert list((proxy.data_dir / "uploads").iterdir()) == []  # no staging left behind
    assert "failed verification" in proxy.log()


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (the workers), in KiB."""
    pids = [pid]
    children = f"/proc/{pid}/task/{pid}/children"
    if os.path.exists(children):
        with open(children) as f:
            pids += [int(p) for p in f.read().split()]
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total


@pytest.mark.slow
def test_a_40_mib_blob_streams_through_in_flat_memory(
    start_server: Callable[..., DockyardServer],
    start_proxy: Callable[..., DockyardServer],
    repo: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    size = 40 * 1024 * 1024
    upstream = start_server(workers=1)
    proxy = start_proxy(upstream, workers=1)
    data = os.urandom(size)
    with api_client(upstream.url) as up:
        digest = push_blob(up, repo, data)
    expected = data
    del data
    assert proxy.process is not None
    with api_client(proxy.url) as through:
        through.get("/v2/")
        baseline = _rss_kib(proxy.process.pid)
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _rss_kib(proxy.process.pid))  # type: ignore[union-attr]
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            h = hashlib.sha256()
            started = time.monotonic()
            received = 0
            with through.stream("GET", f"/v2/{repo}/blobs/{digest}") as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(size)
                for piece in r.iter_bytes():
                    h.update(piece)
                    received += len(piece)
            through_seconds = time.monotonic() - started
        finally:
            stop.set()
            sampler.join()
        assert received == size and "sha256:" + h.hexdigest() == digest
        started = time.monotonic()
        assert through.get(f"/v2/{repo}/blobs/{digest}").content == expected
        cached_seconds = time.monotonic() - started
    with api_client(upstream.url) as up:
        started = time.monotonic()
        assert up.get(f"/v2/{repo}/blobs/{digest}").content == expected
        direct_seconds = time.monotonic() - started
    growth_mib = (peak - baseline) / 1024
    with capsys.disabled():
        print(
            f"\n40 MiB pull-through: proxy RSS {baseline / 1024:.1f} MiB -> peak {peak / 1024:.1f} MiB "
            f"(+{growth_mib:.1f}); through {through_seconds:.2f}s, from the cache {cached_seconds:.2f}s, "
            f"direct from the upstream {direct_seconds:.2f}s"
        )
    # Flat: far less than the blob itself (a buffered copy would show as +40 MiB).
    assert growth_mib < 24, growth_mib


@filesystem_only
def test_a_client_that_hangs_up_does_not_abort_the_download(
    start_server: Callable[..., DockyardServer], start_proxy: Callable[..., DockyardServer], repo: str
) -> None:
    upstream = start_server(workers=1)
    proxy = start_proxy(upstream, workers=1)
    data = os.urandom(8 * 1024 * 1024)
    with api_client(upstream.url) as up:
        digest = push_blob(up, repo, data)
    with api_client(proxy.url) as through, through.stream("GET", f"/v2/{repo}/blobs/{digest}") as r:
        assert r.status_code == 200
        next(r.iter_raw(65536))
    # The client is gone; the cache finishes the download for the next one.
    deadline = time.monotonic() + 60
    while not blob_file(proxy.data_dir, digest).exists():
        assert time.monotonic() < deadline, "the download was abandoned"
        time.sleep(0.05)
    upstream.stop()
    with api_client(proxy.url) as through:
        assert pull_blob(through, repo, digest) == data


class _Failing(BaseHTTPRequestHandler):
    """An upstream that answers every request with a 500."""

    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=["silent", "failing"])
def broken_upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL on 127.0.0.1 where no registry answers: a socket that never replies, or a 500."""
    if request.param == "silent":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)  # connections complete in the backlog; nothing is ever read
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_upstream_that_is_silent_or_failing_gets_a_clear_error_in_bounded_time(
    start_server: Callable[..., DockyardServer], broken_upstream: str, repo: str
) -> None:
    proxy = start_server(
        workers=1,
        env={"DOCKYARD_PROXY__REMOTE_URL": broken_upstream, "DOCKYARD_PROXY__TIMEOUT_SECONDS": "1"},
    )
    with httpx.Client(base_url=proxy.url, timeout=30.0) as through:
        started = time.monotonic()
        assert_error(through.get(f"/v2/{repo}/manifests/v1"), 503, "MANIFEST_UNKNOWN")
        assert_error(through.get(f"/v2/{repo}/manifests/{digest_of(b'x')}"), 503, "MANIFEST_UNKNOWN")
        assert_error(through.get(f"/v2/{repo}/blobs/{digest_of(b'x')}"), 503, "BLOB_UNKNOWN")
        assert through.head(f"/v2/{repo}/blobs/{digest_of(b'x')}").status_code == 503
        r = through.get(f"/v2/{repo}/tags/list")
        assert_error(r, 404, "NAME_UNKNOWN")  # nothing cached to fall back on
        assert time.monotonic() - started < 60  # four answers, each bounded by the 1 s timeout


@filesystem_only
def test_retention_evicts_what_nobody_pulled_and_a_pull_brings_it_back(
    upstream: DockyardServer,
    up: httpx.Client,
    start_proxy: Callable[..., DockyardServer],
    clock: MovableClock,
) -> None:
    """The README's eviction recipe: a tag's time moves whenever a pull re-confirms it with the
    upstream, so a retention rule by age drops what nobody pulled lately, and collection frees
    its blobs. The next pull fetches it again. The proxy's and the collector's clock is moved a
    day forward, so the ages (a day against seconds, the rule half a day) leave margins of hours."""
    gc_env = {
        "DOCKYARD_GC__RETENTION": json.dumps([{"repository": "evict/**", "max_age_days": 0.5}]),
        "DOCKYARD_GC__DELETE_UNTAGGED": "true",
        "DOCKYARD_GC__GRACE_SECONDS": "0",
        **clock.env,
    }
    cold = push_image(up, "evict/cold", "v1", seed="cold")
    hot = push_image(up, "evict/hot", "v1", seed="hot")
    proxy = start_proxy(upstream, tag_ttl=60, env=gc_env)
    with api_client(proxy.url) as through:
        for repo, image in (("evict/cold", cold), ("evict/hot", hot)):
            assert through.get(f"/v2/{repo}/manifests/v1").content == image.manifest
            for blob in (image.config, *image.layers):
                pull_blob(through, repo, digest_of(blob))
        clock.advance(86400)  # a day later, nobody pulled either; the tag TTL (60 s) has passed
        assert through.get("/v2/evict/hot/manifests/v1").content == hot.manifest  # re-confirmed
        collected = subprocess.run(
            [sys.executable, "-m", "dockyard", "gc", "--data-dir", str(proxy.data_dir), "--json"],
            env={**os.environ, **gc_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert collected.returncode == 0, collected.stderr
        assert not blob_file(proxy.data_dir, digest_of(cold.layers[0])).exists()
        assert blob_file(proxy.data_dir, digest_of(hot.layers[0])).exists()
        assert through.get("/v2/evict/cold/manifests/v1").content == cold.manifest
        assert pull_blob(through, "evict/cold", digest_of(cold.layers[0])) == cold.layers[0]
