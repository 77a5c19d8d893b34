"""Push and pull through a bad network: cut connections, lost responses, stalls, killed clients.

The proxy counts what it forwards to the server, so "at most one chunk re-sent per fault" is
measured, not assumed: bytes forwarded upstream minus the blob's size minus the requests' headers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from dockyard.client.layout import OciLayout
from dockyard.client.progress import Progress
from dockyard.client.pull import PullReport, pull_image
from dockyard.client.push import PushReport, push_image
from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry
from dockyard.client.state import STATE_FILE
from tests.client.proxy import FaultProxy, wait_for
from tests.client.support import BigImage, build_big_image, dockyard_process, file_digest
from tests.support.api_helpers import range_end
from tests.support.server import DockyardServer

MIB = 1024 * 1024
HEADER_ALLOWANCE = 1 * MIB  # request lines and headers of every request, generously
IDLE_TIMEOUT = 2.0
# A stall three times the client's idle timeout fires it on any machine. A busy machine may add a
# timeout of its own (a response slower than 2 s): bounds are per fault the client recovered from.
STALL = 3 * IDLE_TIMEOUT
FAST = ClientOptions(idle_timeout=IDLE_TIMEOUT, backoff_base=0.05, backoff_max=0.5, retries=10)


def _push(image: BigImage, proxy: FaultProxy, repo: str, chunk: int) -> PushReport:
    async def run() -> PushReport:
        async with Registry(proxy.url, FAST) as registry:
            return await push_image(
                OciLayout(image.layout),
                "latest",
                ImageReference.parse(f"{proxy.host}/{repo}:v1"),
                registry,
                progress=Progress(quiet=True),
                chunk_size=chunk,
            )

    return asyncio.run(run())


def _pull(proxy: FaultProxy, repo: str, target: Path) -> PullReport:
    async def run() -> PullReport:
        async with Registry(proxy.url, FAST) as registry:
            return await pull_image(
                ImageReference.parse(f"{proxy.host}/{repo}:v1"),
                registry,
                OciLayout(target),
                progress=Progress(quiet=True),
            )

    return asyncio.run(run())


def _server_has(server: DockyardServer, repo: str, digest: str, size: int) -> None:
    r = httpx.head(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=30)
    assert r.status_code == 200 and int(r.headers["content-length"]) == size, r


def test_push_through_cut_lost_and_stalled_connections_resends_at_most_one_chunk_per_fault(
    registry_server: DockyardServer, proxy_to, tmp_path: Path, repo: str
) -> None:
    size, chunk = 64 * MIB, 4 * MIB
    image = build_big_image(tmp_path / "layout", size)
    proxy = proxy_to(registry_server)
    proxy.cut_upstream_at(10 * MIB + 12345)  # mid-chunk
    proxy.drop_response_after(29 * MIB)  # the chunk arrives, its 202 does not
    proxy.stall_upstream_at(45 * MIB + 777, STALL)  # silence: the client's idle timeout fires
    report = _push(image, proxy, repo, chunk)

    assert proxy.pending() == [], proxy.fired
    layer = report.as_dict()["blobs"][image.layer.digest]
    assert layer["faults"] >= 3 and layer["how"] == "chunked", layer
    resent = proxy.upstream - size - HEADER_ALLOWANCE
    assert resent <= layer["faults"] * chunk, (proxy.upstream, proxy.fired, layer)
    _server_has(registry_server, repo, image.layer.digest, size)
    assert not (image.layout / STATE_FILE).exists()

    # and back, through downstream cuts: Range requests go on where the bytes stopped
    proxy.reset_counts()
    proxy.cut_downstream_at(20 * MIB)
    proxy.cut_downstream_at(50 * MIB)
    pulled = _pull(proxy, repo, tmp_path / "out")
    assert proxy.pending() == [], proxy.fired
    assert pulled.faults >= 2
    assert proxy.downstream <= size + pulled.faults * chunk, (proxy.downstream, pulled.faults)
    assert file_digest(tmp_path / "out" / "blobs" / "sha256" / image.layer.digest[7:]) == image.layer.digest


@pytest.mark.slow
def test_a_1_gib_blob_arrives_intact_through_faults_with_at_most_one_chunk_resent_per_fault(
    registry_server: DockyardServer, proxy_to, gib_image: BigImage, tmp_path: Path, repo: str
) -> None:
    size, chunk = gib_image.layer.size, 16 * MIB
    proxy = proxy_to(registry_server)
    proxy.cut_upstream_at(200 * MIB + 4321)
    proxy.drop_response_after(500 * MIB)
    proxy.stall_upstream_at(750 * MIB + 99, STALL)
    proxy.cut_upstream_at(900 * MIB)
    started = time.monotonic()
    report = _push(gib_image, proxy, repo, chunk)
    push_seconds = time.monotonic() - started

    assert proxy.pending() == [], proxy.fired
    layer = report.as_dict()["blobs"][gib_image.layer.digest]
    resent = proxy.upstream - size
    print(
        f"\n1 GiB push: {push_seconds:.1f}s, {len(proxy.fired)} faults, forwarded upstream {proxy.upstream} "
        f"bytes, re-sent + headers {resent} bytes ({resent / len(proxy.fired) / MIB:.2f} MiB per fault), "
        f"client faults {layer['faults']}"
    )
    assert resent - HEADER_ALLOWANCE <= max(len(proxy.fired), layer["faults"]) * chunk
    _server_has(registry_server, repo, gib_image.layer.digest, size)

    proxy.reset_counts()
    proxy.cut_downstream_at(300 * MIB)
    proxy.cut_downstream_at(800 * MIB + 5)
    started = time.monotonic()
    pulled = _pull(proxy, repo, tmp_path / "out")
    print(
        f"1 GiB pull: {time.monotonic() - started:.1f}s, forwarded downstream {proxy.downstream} bytes, "
        f"re-sent {proxy.downstream - size} bytes over {pulled.faults} faults"
    )
    assert proxy.pending() == []
    assert proxy.downstream <= size + pulled.faults * chunk
    out = tmp_path / "out" / "blobs" / "sha256" / gib_image.layer.digest[7:]
    assert out.stat().st_size == size  # the client verified the digest before naming the file


def _session_offset(server: DockyardServer, location: str) -> int:
    """The session's offset once it stops moving (the server may still be taking a cut request)."""
    last = -1
    while True:
        r = httpx.get(f"{server.url}{httpx.URL(location).raw_path.decode()}", timeout=30)
        assert r.status_code == 204, r
        offset = range_end(r.headers["range"]) + 1
        if offset == last:
            return offset
        last = offset
        time.sleep(0.3)


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_an_interrupted_push_continues_the_same_session_when_run_again(
    registry_server: DockyardServer, proxy_to, tmp_path: Path, repo: str, how: str
) -> None:
    size, chunk = 48 * MIB, 4 * MIB
    image = build_big_image(tmp_path / "layout", size)
    proxy = proxy_to(registry_server)
    # The bytes stop mid-blob until the client is stopped: however slow the machine, the push
    # cannot finish first (a rate limit and a byte count raced it, and lost on a busy machine).
    proxy.hold_upstream_at(20 * MIB + 12345)
    args = ["push", f"{image.layout}:latest", f"{proxy.host}/{repo}:v1", "--chunk-size", "4MiB"]
    first = dockyard_process(*args)
    wait_for(proxy.holding, timeout=300)
    first.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
    _, err = first.communicate(timeout=120)
    proxy.release()  # the held connection is cut: the server keeps what reached it
    if how == "Ctrl-C":
        assert first.returncode == 130, err
        assert "run the same command again to resume" in err
    state = json.loads((image.layout / STATE_FILE).read_text())
    (entry,) = state["sessions"].values()
    before = _session_offset(registry_server, entry["location"])
    assert 8 * MIB <= before < size, before

    proxy.reset_counts()
    second = dockyard_process(*args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"resuming at {before / MIB:.1f} MiB" in err, err
    # only what the session lacked went over the wire again (plus at most one chunk, and headers)
    print(f"\n{how}: the session held {before} of {size} bytes; the second run sent {proxy.upstream}")
    assert proxy.upstream <= size - before + chunk + HEADER_ALLOWANCE, (proxy.upstream, before)
    _server_has(registry_server, repo, image.layer.digest, size)
    assert not (image.layout / STATE_FILE).exists()
    r = httpx.get(f"{registry_server.url}{httpx.URL(entry['location']).raw_path.decode()}")
    assert r.status_code == 404  # the session was the one that got committed
