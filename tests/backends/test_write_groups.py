"""Write transactions that run together: one request's failure is its own, whatever it shared a
commit with (on SQLite, concurrent requests' transactions share one commit: group commit)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dockyard.registry import errors
from dockyard.registry.digests import Digest
from dockyard.registry.ports import ManifestRecord, ManifestRef
from tests.backends.conftest import MetadataHarness

pytestmark = pytest.mark.anyio
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def d(text: str) -> Digest:
    return Digest("sha256", hashlib.sha256(text.encode()).hexdigest())


async def test_a_failing_transaction_does_not_undo_the_ones_committed_with_it(
    metadata: MetadataHarness,
) -> None:
    meta = await metadata.new_store()
    repo = "groups/neighbours"
    await meta.link_blob(repo, d("layer"), 10)

    async def push(i: int) -> None:
        # Every third manifest needs a blob the repository lacks: its transaction fails inside,
        # after it wrote the repository row and touched the links it could find.
        needed = [ManifestRef(d("layer"), "blob")]
        if i % 3 == 0:
            needed.append(ManifestRef(d(f"missing-{i}"), "blob"))
        record = ManifestRecord(d(f"manifest-{i}"), OCI_MANIFEST, 100)
        await meta.put_manifest(repo, record, needed, [f"t{i}"])

    outcomes = await asyncio.gather(*(push(i) for i in range(60)), return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if i % 3 == 0:
            assert isinstance(outcome, errors.RegistryError), outcome
            assert outcome.error is errors.MANIFEST_BLOB_UNKNOWN
            assert await meta.resolve_tag(repo, f"t{i}") is None
            assert await meta.get_manifest(repo, d(f"manifest-{i}")) is None
        else:
            assert outcome is None, outcome
            found = await meta.resolve_tag(repo, f"t{i}")
            assert found is not None and found.digest == d(f"manifest-{i}")
    writer = meta._writer
    if writer is not None:  # SQLite: the requests did share commits
        assert writer.transactions >= 40
        assert writer.groups < writer.transactions


async def test_a_link_that_ends_an_upload_session_removes_it_in_the_same_transaction(
    metadata: MetadataHarness,
) -> None:
    from dockyard.registry.ports import UploadSession

    meta = await metadata.new_store()
    session = UploadSession(id="5f0c1c3e-0000-4000-8000-000000000001", repository="groups/put")
    await meta.create_upload(session)
    await meta.link_blob("groups/put", d("blob"), 5, ending_upload=session.id)
    assert await meta.get_upload(session.id) is None
    assert await meta.linked_blob_size("groups/put", d("blob")) == 5
