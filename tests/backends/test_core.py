"""The registry core over every pair of storage and metadata adapters, each request on another "node".

A node here is a ``Registry`` with adapter objects of its own over the shared storage and
database, as a ``dockyard serve`` process on another machine would have.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import AsyncIterator

import pytest

from dockyard import fsck as fsck_module
from dockyard.fsck import fsck
from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.names import Reference
from tests.backends.conftest import Nodes

pytestmark = pytest.mark.anyio
KiB, MiB = 1 << 10, 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


async def body(data: bytes, piece: int = 256 * KiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def dropped_after(data: bytes, sent: int) -> AsyncIterator[bytes]:
    """A request body whose client goes away after ``sent`` bytes."""
    async for piece in body(data[:sent]):
        yield piece
    raise ConnectionResetError("client went away")


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    def descriptor(data: bytes, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [descriptor(layer, "application/vnd.oci.image.layer.v1.tar+gzip") for layer in layers],
        }
    ).encode()


async def test_a_chunked_upload_whose_every_request_goes_to_another_node(nodes: Nodes) -> None:
    data = os.urandom(13 * MiB + 77)
    cuts = [0, 1000, 6 * MiB, 6 * MiB + 10, 12 * MiB, len(data)]
    session = await (await nodes.node()).start_upload("app")
    for a, b in itertools.pairwise(cuts[:-1]):
        node = await nodes.node()
        done = await node.append_chunk("app", session.id, f"{a}-{b - 1}", b - a, body(data[a:b]))
        assert done.offset == b
        assert (await (await nodes.node()).upload_status("app", session.id)).offset == b
    last = cuts[-2]
    digest = await (await nodes.node()).commit_upload(
        "app", session.id, digest_of(data), f"{last}-{len(data) - 1}", len(data) - last, body(data[last:])
    )
    reader = await nodes.node()
    info = await reader.blob_info("app", digest)
    assert info.size == len(data)
    assert b"".join([x async for x in reader.read_blob(digest, 0, len(data))]) == data
    assert await nodes.storage.leftovers() == []
    report = await fsck(await nodes.node())
    assert report.clean and not report.orphan_staging, report.as_dict()


async def test_a_wrong_digest_publishes_nothing_and_leaves_nothing_in_storage(nodes: Nodes) -> None:
    data = os.urandom(11 * MiB)
    node = await nodes.node()
    session = await node.start_upload("app")
    await node.append_chunk("app", session.id, None, None, body(data[: 7 * MiB]))
    await (await nodes.node()).append_chunk("app", session.id, None, None, body(data[7 * MiB :]))
    assert await nodes.storage.leftovers() != []
    wrong = digest_of(data + b"!")
    with pytest.raises(errors.RegistryError) as raised:
        await (await nodes.node()).commit_upload("app", session.id, wrong, None, None, None)
    assert raised.value.error.code == "DIGEST_INVALID"
    assert await nodes.storage.leftovers() == []
    assert await nodes.storage.leftovers("blobs") == []
    with pytest.raises(errors.RegistryError):
        await (await nodes.node()).upload_status("app", session.id)


async def test_a_dropped_patch_keeps_what_arrived_and_another_node_finishes(nodes: Nodes) -> None:
    data = os.urandom(9 * MiB + 5)
    node = await nodes.node()
    session = await node.start_upload("app")
    with pytest.raises(ConnectionResetError):
        await node.append_chunk("app", session.id, None, None, dropped_after(data, 6 * MiB + 3))
    offset = (await (await nodes.node()).upload_status("app", session.id)).offset
    assert offset == 6 * MiB + 3  # everything that arrived was kept, and recorded
    digest = await (await nodes.node()).commit_upload(
        "app", session.id, digest_of(data), f"{offset}-{len(data) - 1}", None, body(data[offset:])
    )
    reader = await nodes.node()
    assert b"".join([x async for x in reader.read_blob(digest, 0, len(data))]) == data


async def test_push_on_one_node_pull_and_mount_on_others(nodes: Nodes) -> None:
    config, layer = os.urandom(300), os.urandom(6 * MiB + 1)
    pusher = await nodes.node()
    for data in (config, layer):
        await pusher.upload_whole("team/app", digest_of(data), len(data), body(data))
    manifest = image_manifest(config, [layer])
    await pusher.put_manifest("team/app", Reference(tag="v1"), manifest, OCI_MANIFEST)
    puller = await nodes.node()
    record, got = await puller.get_manifest("team/app", Reference.parse("v1"))
    assert got == manifest and str(record.digest) == digest_of(manifest)
    info = await puller.blob_info("team/app", Digest.parse(digest_of(layer)))
    assert b"".join([x async for x in puller.read_blob(info.digest, 0, info.size)]) == layer
    mounter = await nodes.node()
    assert await mounter.mount_blob("team/other", info.digest, "team/app") == len(layer)
    # The tag moves on one node; the next request on another sees it.
    manifest2 = image_manifest(config, [])
    await (await nodes.node()).put_manifest("team/app", Reference(tag="v1"), manifest2, OCI_MANIFEST)
    _, got = await puller.get_manifest("team/app", Reference.parse("v1"))
    assert got == manifest2
    report = await fsck(await nodes.node())
    assert report.clean and report.blobs_checked == 4, report.as_dict()


async def test_fsck_walks_records_and_bytes_side_by_side_and_finds_every_kind_of_damage(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records and stored bytes are merged in digest order a page at a time (pages of 2 here, so
    every finding sits on or across a page boundary): each difference lands in its own list."""
    monkeypatch.setattr(fsck_module, "PAGE", 2)
    node = await nodes.node()
    layers = [os.urandom(1000 + i) for i in range(9)]
    for data in layers:
        await node.upload_whole("app", digest_of(data), len(data), body(data))
    pushed = [image_manifest(layers[0], layers[1:i]) for i in (2, 4)]
    for i, manifest in enumerate(pushed):
        await node.put_manifest("app", Reference(tag=f"v{i}"), manifest, OCI_MANIFEST)
    stored = sorted(Digest.parse(digest_of(data)) for data in layers + pushed)
    gone_blob, gone_manifest = Digest.parse(digest_of(layers[5])), Digest.parse(digest_of(pushed[1]))
    await node.blobs.delete(gone_blob)
    await node.blobs.delete(gone_manifest)
    bad = Digest.parse(digest_of(layers[7]))
    await node.blobs.delete(bad)
    await node.blobs.put(bad, b"not what was pushed")
    orphans = [os.urandom(500 + i) for i in range(3)]
    for data in orphans:
        await node.blobs.put(Digest.parse(digest_of(data)), data)

    report = await fsck(await nodes.node())
    assert not report.clean
    assert report.missing_bytes == sorted([gone_blob, gone_manifest])
    assert report.corrupt == [bad]
    assert report.orphan_bytes == sorted(Digest.parse(digest_of(data)) for data in orphans)
    assert report.blobs_checked == len(stored) - 2 + len(orphans)
    assert report.dangling_tags == [] and report.unrecorded_links == [] and report.unparseable == []

    await fsck(await nodes.node(), repair=True, grace_seconds=0)
    after = await fsck(await nodes.node())
    assert after.clean and after.orphan_bytes == [], after.as_dict()
    assert after.blobs_checked == len(stored) - 3  # the corrupt and the missing ones are forgotten


async def test_fsck_finds_and_repairs_an_orphan_staging_area(nodes: Nodes) -> None:
    node = await nodes.node()
    session = await node.start_upload("app")
    await node.append_chunk("app", session.id, None, None, body(os.urandom(5 * MiB + 9)))
    await node.meta.delete_upload(session.id)  # the row is gone, the staged bytes are not
    report = await fsck(await nodes.node())
    assert report.clean and report.orphan_staging == [session.id], report.as_dict()
    await fsck(await nodes.node(), repair=True, grace_seconds=0)
    assert await nodes.storage.leftovers() == []
    assert (await fsck(await nodes.node())).orphan_staging == []
