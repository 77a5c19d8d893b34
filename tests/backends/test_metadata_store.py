"""The facts port, the same tests for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from dockyard.registry.digests import Digest
from dockyard.registry.ports import ManifestRecord, ManifestRef, UploadSession
from tests.backends.conftest import MetadataHarness

pytestmark = pytest.mark.anyio
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def d(text: str) -> Digest:
    return Digest("sha256", hashlib.sha256(text.encode()).hexdigest())


def manifest(
    text: str, subject: Digest | None = None, artifact_type: str | None = None, size: int = 100
) -> ManifestRecord:
    return ManifestRecord(d(text), OCI_MANIFEST, size, artifact_type=artifact_type, subject=subject)


def refs(*texts: str) -> Sequence[ManifestRef]:
    return [ManifestRef(d(t), "blob") for t in texts]


async def test_links_are_per_repository_and_a_mount_is_a_link(metadata: MetadataHarness) -> None:
    meta = await metadata.new_store()
    other = await metadata.new_store()  # another node
    assert not await meta.repository_exists("a/one")
    await meta.link_blob("a/one", d("layer"), 42)
    await meta.link_blob("a/one", d("layer"), 42)  # idempotent
    assert await other.repository_exists("a/one")
    assert await other.linked_blob_size("a/one", d("layer")) == 42
    assert await other.linked_blob_size("a/two", d("layer")) is None
    assert await other.blob_size(d("layer")) == 42
    await other.link_blob("a/two", d("layer"), 42)
    assert await meta.missing_blobs("a/two", [d("layer"), d("nope")]) == [d("nope")]
    assert await meta.unlink_blob("a/one", d("layer"))
    assert not await meta.unlink_blob("a/one", d("layer"))
    assert await other.linked_blob_size("a/one", d("layer")) is None
    assert await other.recorded_digests(None) == [d("layer")]
    assert await other.unrecorded_links() == []
    await other.forget_blob(d("layer"))
    assert await meta.blob_size(d("layer")) is None
    assert await meta.linked_blob_size("a/two", d("layer")) is None


async def test_repositories_and_tags_list_in_byte_order_with_pagination(metadata: MetadataHarness) -> None:
    meta = await metadata.new_store()
    names = ["b", "a/z", "a-b", "a.b", "a_b", "a/b", "ab"]
    for name in names:
        await meta.link_blob(name, d("x"), 1)
    assert await meta.list_repositories(100, None) == sorted(names)  # byte-wise: "-" < "." < "/" < "_"
    assert await meta.list_repositories(2, "a.b") == sorted(names)[2:4]
    tags = ["v1", "V1", "latest", "1.0", "1.0-rc", "_x", "a-b", "a.b", "a_b", "Z"]
    await meta.link_blob("r", d("layer"), 1)
    await meta.put_manifest("r", manifest("m"), refs("layer"), tags)
    assert await meta.list_tags("r", 100, None) == sorted(tags)
    assert await meta.list_tags("r", 3, "1.0-rc") == sorted(tags)[2:5]
    assert await meta.list_tags("r", 100, "v1") == []


async def test_manifests_tags_and_a_tag_moved_by_another_node(metadata: MetadataHarness) -> None:
    node_a, node_b = await metadata.new_store(), await metadata.new_store()
    await node_a.link_blob("app", d("layer"), 10)
    await node_a.put_manifest("app", manifest("v1"), refs("layer"), ["latest", "v1"])
    await node_a.put_manifest("app", manifest("v1"), refs("layer"), ["latest"])  # idempotent
    assert (await node_b.resolve_tag("app", "latest")) == manifest("v1")
    assert await node_b.get_manifest("app", d("v1")) == manifest("v1")
    assert await node_b.get_manifest("other", d("v1")) is None
    await node_b.put_manifest("app", manifest("v2", size=7), refs("layer"), ["latest"])
    moved = await node_a.resolve_tag("app", "latest")
    assert moved is not None and moved.digest == d("v2") and moved.size == 7
    assert (await node_a.resolve_tag("app", "v1")) == manifest("v1")
    assert await node_a.missing_manifests("app", [d("v1"), d("v3")]) == [d("v3")]
    assert await node_a.recorded_digests(None) == sorted([d("layer"), d("v1"), d("v2")])
    first, *rest = sorted([d("layer"), d("v1"), d("v2")])
    assert await node_a.recorded_digests(first, limit=1) == rest[:1]  # a page after a digest
    assert await node_a.recorded_digests(rest[-1]) == []
    assert await node_b.delete_tag("app", "v1")
    assert not await node_b.delete_tag("app", "v1")
    assert await node_b.delete_manifest("app", d("v2"))
    assert await node_a.resolve_tag("app", "latest") is None
    assert not await node_a.delete_manifest("app", d("v2"))
    assert await node_a.dangling_tags() == []


async def test_when_a_tag_was_confirmed_is_shared_and_touched_only_where_it_still_points(
    metadata: MetadataHarness,
) -> None:
    node_a, node_b = await metadata.new_store(), await metadata.new_store()
    assert await node_a.tag_updated_at("cache", "latest") is None
    before = time.time()
    await node_a.put_manifest("cache", manifest("v1"), [ManifestRef(d("layer"), "blob", False)], ["latest"])
    moved_at = await node_b.tag_updated_at("cache", "latest")
    assert moved_at is not None and before - 1 <= moved_at <= time.time() + 1
    await asyncio.sleep(0.02)
    assert await node_b.touch_tag("cache", "latest", d("v1"))
    touched_at = await node_a.tag_updated_at("cache", "latest")
    assert touched_at is not None and touched_at > moved_at
    assert not await node_b.touch_tag("cache", "latest", d("v2"))  # it points elsewhere
    assert not await node_b.touch_tag("cache", "gone", d("v1"))
    assert await node_a.tag_updated_at("cache", "latest") == touched_at


async def test_referrers_by_subject_and_artifact_type(metadata: MetadataHarness) -> None:
    meta = await metadata.new_store()
    subject = d("image")
    await meta.put_manifest("app", manifest("sig", subject, "application/vnd.example.sig"), [], [])
    await meta.put_manifest("app", manifest("sbom", subject, "application/spdx+json"), [], [])
    await meta.put_manifest("app", manifest("unrelated"), [], [])
    await meta.put_manifest("other", manifest("elsewhere", subject, "application/spdx+json"), [], [])
    found = await meta.list_referrers("app", subject, None)
    assert {r.digest for r in found} == {d("sig"), d("sbom")}
    assert all(r.subject == subject for r in found)
    only = await meta.list_referrers("app", subject, "application/spdx+json")
    assert [r.digest for r in only] == [d("sbom")]
    assert await meta.list_referrers("app", d("nothing"), None) == []


async def test_tags_of_a_manifest_in_byte_order_and_only_its_own(metadata: MetadataHarness) -> None:
    meta = await metadata.new_store()
    await meta.put_manifest("app", manifest("v1"), [], ["v1", "latest", "V1", "stable"])
    await meta.put_manifest("app", manifest("v2"), [], ["v2"])
    await meta.put_manifest("other", manifest("v1"), [], ["elsewhere"])
    assert await meta.tags_of_manifest("app", d("v1"), 10) == ["V1", "latest", "stable", "v1"]
    assert await meta.tags_of_manifest("app", d("v1"), 2) == ["V1", "latest"]
    await meta.put_manifest("app", manifest("v2"), [], ["latest"])  # moved away
    assert await meta.tags_of_manifest("app", d("v1"), 10) == ["V1", "stable", "v1"]
    assert await meta.tags_of_manifest("app", d("v2"), 10) == ["latest", "v2"]
    assert await meta.tags_of_manifest("app", d("nothing"), 10) == []


async def test_upload_sessions_keep_their_backend_state(metadata: MetadataHarness) -> None:
    meta, other = await metadata.new_store(), await metadata.new_store()
    now = time.time()
    session = UploadSession(id="u-1", repository="app", created_at=now, updated_at=now, owner="alice")
    await meta.create_upload(session)
    await meta.create_upload(UploadSession(id="u-2", repository="app", created_at=0.0, updated_at=0.0))
    assert await other.count_uploads("app") == 2
    session.offset = 12 * 1024 * 1024
    session.backend_state = {"upload": "abc", "parts": [[1, '"etag"', 8 << 20]], "tail": 4 << 20}
    session.updated_at = now + 1
    await meta.save_upload(session)
    loaded = await other.get_upload("u-1")
    assert loaded == session
    assert [s.id for s in await other.stale_uploads(now - 10)] == ["u-2"]
    assert await other.upload_ids() == {"u-1", "u-2"}
    await other.delete_upload("u-2")
    assert await meta.get_upload("u-2") is None
    assert await meta.count_uploads("app") == 1


async def test_a_session_lock_held_by_one_node_refuses_another(metadata: MetadataHarness) -> None:
    node_a, node_b = await metadata.new_store(), await metadata.new_store()
    async with node_a.lock_upload("u-lock") as held:
        assert held
        async with node_b.lock_upload("u-lock") as second:
            assert not second
        async with node_b.lock_upload("u-other") as unrelated:
            assert unrelated
    async with node_b.lock_upload("u-lock") as again:
        assert again


_HOLD_LOCK = """
import asyncio, sys
from dockyard.metadata.store import SqlMetadataStore

async def main():
    store = SqlMetadataStore(sys.argv[1])
    await store.open()
    async with store.lock_upload("u-crash") as held:
        async with store.try_lock("collector") as named:
            print("held" if held and named else "refused", flush=True)
            await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_lock_dies_with_the_process_that_held_it(metadata: MetadataHarness) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_LOCK, metadata.url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.strip() == b"held"
        meta = await metadata.new_store()
        async with meta.lock_upload("u-crash") as held:
            assert not held
        async with meta.try_lock("collector") as held:
            assert not held
        holder.send_signal(signal.SIGKILL)  # kill -9: no unlock, no goodbye to the server
        await holder.wait()
        deadline = time.monotonic() + 60
        while True:  # the server notices the closed connection at once; allow it a moment
            async with meta.lock_upload("u-crash") as held, meta.try_lock("collector") as named:
                if held and named:
                    break
            assert time.monotonic() < deadline, "the dead process's locks were never released"
            await asyncio.sleep(0.05)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_blob_locks_wait_for_each_other_across_nodes(metadata: MetadataHarness) -> None:
    node_a, node_b = await metadata.new_store(), await metadata.new_store()
    order: list[str] = []
    a_holds, b_asks = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with node_a.lock_blob(d("shared")):
            order.append("a in")
            a_holds.set()
            await b_asks.wait()
            await asyncio.sleep(0.3)  # b is asking meanwhile: it must not get in
            order.append("a out")

    async def second() -> None:
        await a_holds.wait()  # no head start to race: b asks only once a holds the lock
        b_asks.set()
        async with node_b.lock_blob(d("shared")):
            order.append("b in")
            order.append("b out")

    await asyncio.gather(first(), second())
    assert order == ["a in", "a out", "b in", "b out"]
    async with node_a.lock_blob(d("one")), node_b.lock_blob(d("two")):
        pass  # different blobs do not wait for each other


async def test_nodes_starting_together_migrate_once(metadata: MetadataHarness) -> None:
    stores = await asyncio.gather(*(metadata.new_store() for _ in range(4)))
    current, head = await stores[0].revisions()
    assert current == head is not None


async def test_concurrent_pushes_moving_one_tag_leave_it_on_one_of_them(metadata: MetadataHarness) -> None:
    nodes = [await metadata.new_store() for _ in range(3)]
    await nodes[0].link_blob("race", d("layer"), 1)
    await asyncio.gather(
        *(nodes[i % 3].put_manifest("race", manifest(f"m{i}"), refs("layer"), ["latest"]) for i in range(12))
    )
    final = await nodes[1].resolve_tag("race", "latest")
    assert final is not None and final.digest in {d(f"m{i}") for i in range(12)}
    assert await nodes[2].list_tags("race", 10, None) == ["latest"]


async def test_deleting_a_manifest_while_it_is_pushed_again_never_leaves_a_dangling_tag(
    metadata: MetadataHarness,
) -> None:
    push_node, delete_node = await metadata.new_store(), await metadata.new_store()
    await push_node.link_blob("churn", d("layer"), 1)
    for round_ in range(40):
        await push_node.put_manifest("churn", manifest("m"), refs("layer"), [])
        await asyncio.gather(
            push_node.put_manifest("churn", manifest("m"), refs("layer"), [f"t{round_}"]),
            delete_node.delete_manifest("churn", d("m")),
        )
        assert await delete_node.dangling_tags() == [], f"round {round_}"


async def test_db_upgrade_and_db_current_commands(metadata: MetadataHarness, tmp_path: Path) -> None:
    env = {**os.environ, "DOCKYARD_DATABASE_URL": metadata.url}

    async def dockyard(*args: str) -> tuple[int, str]:
        command = [sys.executable, "-m", "dockyard", *args, "--data-dir", str(tmp_path / "data")]
        done = await anyio.run_process(command, env=env, check=False)
        return done.returncode, done.stdout.decode() + done.stderr.decode()

    code, out = await dockyard("db", "current")
    assert code == 1 and "current: none" in out, out
    code, out = await dockyard("db", "upgrade")
    assert code == 0 and "schema at revision" in out, out
    code, out = await dockyard("db", "current")
    assert code == 0, out
    current, head = (line.split(": ")[1] for line in out.strip().splitlines())
    assert current == head != "none"
    store = await metadata.new_store()
    assert await store.revisions() == (current, head)
