"""Direct uploads through the core, over every pair of adapters, each call on another "node".

On a filesystem store none is offered (the session is ordinary); on S3 the parts go to the
bucket by plain HTTP ``PUT``s to the URLs the core hands out, and any node closes the session.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from dockyard.registry import errors
from dockyard.registry.digests import Digest
from tests.backends.conftest import Nodes

pytestmark = pytest.mark.anyio
MiB = 1 << 20
KIND = "s3-multipart"


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


async def test_a_direct_session_spans_nodes_and_publishes_only_verified_bytes(nodes: Nodes) -> None:
    first = await nodes.node()
    session = await first.begin_upload("direct/core", direct=[KIND])
    assert not isinstance(session, Digest)
    if first.blobs.direct is None:  # a filesystem: an ordinary session, the header changes nothing
        assert first.direct_kind(session) is None
        return
    assert first.direct_kind(session) == KIND
    data = os.urandom(7 * MiB + 5)
    pieces = {1: data[: 5 * MiB], 2: data[5 * MiB :]}
    second = await nodes.node()
    request = {"parts": [{"number": n, "size": len(p)} for n, p in pieces.items()]}
    _, urls, expiry = await second.direct_part_urls("direct/core", session.id, request)
    assert expiry == 900 and [u.number for u in urls] == [1, 2]
    async with httpx.AsyncClient(timeout=60) as http:
        for url in urls:
            r = await http.put(url.url, content=pieces[url.number], headers=url.headers)
            assert r.status_code == 200, r.text
    third = await nodes.node()
    status = await third.direct_status(await third.upload_status("direct/core", session.id))
    assert [(p.number, p.size) for p in status.parts] == [(1, 5 * MiB), (2, 2 * MiB + 5)]
    with pytest.raises(errors.RegistryError) as refused:  # the mix is refused, the session stays
        await third.append_chunk("direct/core", session.id, None, 3, _body(b"abc"))
    assert refused.value.status == 409
    fourth = await nodes.node()
    digest = await fourth.commit_upload("direct/core", session.id, digest_of(data), None, None, None)
    assert await (await nodes.node()).blobs.stat(digest) == len(data)
    assert await nodes.storage.leftovers() == []


async def test_a_wrong_digest_removes_the_direct_session_and_its_parts(nodes: Nodes) -> None:
    node = await nodes.node()
    if node.blobs.direct is None:
        pytest.skip("the filesystem store offers no direct uploads")
    session = await node.begin_upload("direct/wrong", direct=[KIND])
    assert not isinstance(session, Digest)
    data = os.urandom(1000)
    _, urls, _ = await node.direct_part_urls(
        "direct/wrong", session.id, {"parts": [{"number": 1, "size": 1000}]}
    )
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.put(urls[0].url, content=data, headers=urls[0].headers)).status_code == 200
    with pytest.raises(errors.RegistryError) as wrong:
        await (await nodes.node()).commit_upload(
            "direct/wrong", session.id, digest_of(b"other"), None, None, None
        )
    assert wrong.value.error == errors.DIGEST_INVALID
    assert await nodes.storage.leftovers() == []
    assert await node.meta.get_upload(session.id) is None


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data
