"""Kill -9 at every point where a write is half done; after a restart nothing acknowledged is
lost, nothing half-written is visible, and interrupted sessions can be continued.

Crash points are named in the code (``dockyard.failpoints``): a server started with
``DOCKYARD_FAILPOINTS=<point>`` SIGKILLs itself there. Between PATCHes and mid-stream the test
also kills the server from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.api_helpers import (
    OCI_MANIFEST,
    digest_of,
    image_manifest,
    open_session,
    push_blob,
    session_offset,
)
from tests.support.server import DockyardServer

MiB = 1 << 20


@dataclass
class Ledger:
    """What the registry acknowledged (201/202) and must therefore still have after a crash."""

    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)

    def verify(self, client: httpx.Client) -> None:
        for (repo, digest), data in self.blobs.items():
            r = client.get(f"/v2/{repo}/blobs/{digest}")
            assert r.status_code == 200, (repo, digest, r.status_code)
            assert digest_of(r.content, digest.split(":")[0]) == digest
            assert r.content == data
        for (repo, digest), body in self.manifests.items():
            r = client.get(f"/v2/{repo}/manifests/{digest}")
            assert r.status_code == 200, (repo, digest, r.status_code)
            assert r.content == body
        for (repo, tag), digest in self.tags.items():
            r = client.get(f"/v2/{repo}/manifests/{tag}")
            assert r.status_code == 200, (repo, tag, r.status_code)
            assert r.headers["docker-content-digest"] == digest


def fsck(server: DockyardServer) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--data-dir", str(server.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report: dict[str, object] = json.loads(out.stdout)
    assert report["clean"], report
    assert out.returncode == 0
    return report


@pytest.fixture
def crashable(start_server: Callable[..., DockyardServer]) -> Iterator[Callable[[str], DockyardServer]]:
    """A one-worker server that crashes at the named point (``""``: only when we kill it)."""

    def start(point: str) -> DockyardServer:
        return start_server(workers=1, env={"DOCKYARD_FAILPOINTS": point} if point else {})

    yield start


def arm(server: DockyardServer, point: str) -> httpx.Client:
    """Restart ``server`` so that it crashes at ``point``."""
    server.env = {"DOCKYARD_FAILPOINTS": point}
    server.restart()
    return httpx.Client(base_url=server.url, timeout=60)


def recover(server: DockyardServer, ledger: Ledger) -> httpx.Client:
    """Restart without crash points; check the ledger and fsck; hand back a client."""
    deadline = time.monotonic() + 60
    while server.process is not None and server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the crash point's SIGKILL is on its way
    server.env = {}
    server.restart()
    client = httpx.Client(base_url=server.url, timeout=60)
    ledger.verify(client)
    fsck(server)
    return client


def expect_crash(send: Callable[[], httpx.Response]) -> None:
    with pytest.raises(httpx.TransportError):
        send()


def seed_ledger(client: httpx.Client, repo: str, ledger: Ledger) -> None:
    """Acknowledged content that every crash must leave intact."""
    config, layer = os.urandom(300), os.urandom(900 * 1024)  # under the mid-body crash point
    for data in (config, layer):
        ledger.blobs[(repo, push_blob(client, repo, data))] = data
    body = image_manifest(config, [layer])
    r = client.put(f"/v2/{repo}/manifests/stable", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201
    ledger.manifests[(repo, r.headers["docker-content-digest"])] = body
    ledger.tags[(repo, "stable")] = r.headers["docker-content-digest"]


# -- upload sessions ---------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["patch.mid_body", "patch.before_save"])
def test_crash_during_patch_keeps_the_last_acknowledged_offset(
    crashable: Callable[[str], DockyardServer], point: str
) -> None:
    server = crashable(point)
    ledger = Ledger()
    data = os.urandom(3 * MiB)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        if point != "patch.before_save":
            seed_ledger(client, "crash/patch", ledger)
        location = open_session(client, "crash/patch")
        if point == "patch.mid_body":
            r = client.patch(
                location, content=data[: MiB // 2], headers={"Content-Range": f"0-{MiB // 2 - 1}"}
            )
            assert r.status_code == 202
            acknowledged = MiB // 2
        else:
            acknowledged = 0
        rest = data[acknowledged:]
        expect_crash(lambda: client.patch(location, content=rest))
    client = recover(server, ledger)
    # The session stands where the last acknowledged PATCH left it, and continues from there.
    assert session_offset(client, location) == acknowledged
    r = client.patch(location, content=data[acknowledged:])
    assert r.status_code == 202
    r = client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/crash/patch/blobs/{digest_of(data)}").content == data
    fsck(server)


def test_kill_between_patches_and_mid_stream_session_continues(
    crashable: Callable[[str], DockyardServer],
) -> None:
    server = crashable("")
    ledger = Ledger()
    data = os.urandom(6 * MiB)
    client = httpx.Client(base_url=server.url, timeout=60)
    seed_ledger(client, "crash/between", ledger)
    location = open_session(client, "crash/between")
    r = client.patch(location, content=data[:MiB], headers={"Content-Range": f"0-{MiB - 1}"})
    assert r.status_code == 202
    client.close()
    server.kill()  # between PATCHes
    client = recover(server, ledger)
    assert session_offset(client, location) == MiB

    # Kill from outside while a streamed PATCH is still sending its body.
    def slow_body() -> Iterator[bytes]:
        yield data[MiB : 2 * MiB]
        time.sleep(0.5)
        server.kill()
        yield data[2 * MiB : 3 * MiB]

    expect_crash(lambda: client.patch(location, content=slow_body()))
    client = recover(server, ledger)
    offset = session_offset(client, location)
    assert MiB <= offset <= 3 * MiB
    r = client.patch(location, content=data[offset:], headers={"Content-Range": f"{offset}-{len(data) - 1}"})
    assert r.status_code == 202
    r = client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/crash/between/blobs/{digest_of(data)}").content == data


@pytest.mark.parametrize("point", ["commit.before_move", "commit.after_move", "commit.after_link"])
def test_crash_during_final_put_publishes_nothing_half_written(
    crashable: Callable[[str], DockyardServer], point: str
) -> None:
    server = crashable(point)
    ledger = Ledger()
    data = os.urandom(3 * MiB + 17)
    digest = digest_of(data)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        location = open_session(client, "crash/commit")
        assert client.patch(location, content=data).status_code == 202
        expect_crash(lambda: client.put(location, params={"digest": digest}))
    client = recover(server, ledger)
    blob = client.get(f"/v2/crash/commit/blobs/{digest}")
    if blob.status_code == 200:  # visible only when whole and verified
        assert blob.content == data
    else:
        assert blob.status_code == 404
    # The client never got its 201: asking the session and putting again finishes the push.
    assert session_offset(client, location) == len(data)
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    assert client.get(f"/v2/crash/commit/blobs/{digest}").content == data
    fsck(server)


# -- manifests, tags, deletes ------------------------------------------------------------------


@pytest.mark.parametrize("point", ["manifest.before_record", "manifest.after_record"])
def test_crash_during_manifest_put_and_tag_move(
    crashable: Callable[[str], DockyardServer], point: str
) -> None:
    server = crashable("")
    ledger = Ledger()
    repo = "crash/manifest"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        seed_ledger(client, repo, ledger)
        old = ledger.tags[(repo, "stable")]
        config, layer = os.urandom(200), os.urandom(1000)
        for blob in (config, layer):
            ledger.blobs[(repo, push_blob(client, repo, blob))] = blob
    with arm(server, point) as client:
        body = image_manifest(config, [layer])
        new = digest_of(body)
        # Moving "stable" to a new manifest crashes before or after the metadata commit.
        ledger_tags = dict(ledger.tags)
        ledger.tags.clear()  # the tag's target is checked below, not by the ledger
        expect_crash(
            lambda: client.put(
                f"/v2/{repo}/manifests/stable", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
        )
    client = recover(server, ledger)
    target = client.get(f"/v2/{repo}/manifests/stable").headers["docker-content-digest"]
    if point == "manifest.before_record":
        assert target == old
        assert client.get(f"/v2/{repo}/manifests/{new}").status_code == 404
    else:
        assert target == new
        assert client.get(f"/v2/{repo}/manifests/{new}").content == body
    tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["stable"]
    assert ledger_tags[(repo, "stable")] == old
    # And the push, retried, succeeds.
    r = client.put(f"/v2/{repo}/manifests/stable", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201
    assert client.get(f"/v2/{repo}/manifests/stable").content == body
    fsck(server)


@pytest.mark.parametrize("point", ["delete.before", "delete.after"])
@pytest.mark.parametrize("what", ["manifest", "tag", "blob"])
def test_crash_during_delete_leaves_old_or_new_state(
    crashable: Callable[[str], DockyardServer], point: str, what: str
) -> None:
    server = crashable("")
    ledger = Ledger()
    repo = "crash/delete"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        seed_ledger(client, repo, ledger)
        victim_blob = os.urandom(5000)
        victim_digest = push_blob(client, repo, victim_blob)
    with arm(server, point) as client:
        manifest_digest = ledger.tags[(repo, "stable")]
        ledger.tags.clear()
        if what == "manifest":
            del ledger.manifests[(repo, manifest_digest)]
            url = f"/v2/{repo}/manifests/{manifest_digest}"
        elif what == "tag":
            url = f"/v2/{repo}/manifests/stable"
        else:
            url = f"/v2/{repo}/blobs/{victim_digest}"
        expect_crash(lambda: client.delete(url))
    client = recover(server, ledger)
    status = client.get(url).status_code
    assert status == (200 if point == "delete.before" else 404)
    if what != "blob":
        tag = client.get(f"/v2/{repo}/manifests/stable")
        listed = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        # Tags list and GET agree: no tag points at nothing.
        assert (tag.status_code == 200) == ("stable" in listed)
    # The delete, retried, finishes the job.
    retry = client.delete(url)
    assert retry.status_code in (202, 404)
    assert client.get(url).status_code == 404
    fsck(server)
