"""The backend suite's fixtures: every test here runs against each storage and metadata adapter.

``storage`` is a filesystem directory or a key prefix in the shared SeaweedFS bucket;
``metadata`` is a SQLite file or a fresh PostgreSQL database. A harness hands out *new adapter
objects* over the same place (``new_store()``), which is how these tests play "another node",
and tells what is left in storage (``leftovers()``), which is how they check that nothing is.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dockyard.loop import choice_from_env, loop_factory
from dockyard.metadata.store import SqlMetadataStore
from dockyard.registry.ports import BlobStore
from dockyard.registry.service import Registry
from dockyard.storage.filesystem import FilesystemBlobStore
from tests.support.services import PostgresServer, SeaweedFS

pytestmark = pytest.mark.anyio
MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The loop the server runs (uvloop by default; ``DOCKYARD_EVENT_LOOP=asyncio``: the stock one),
    so that the adapters' drivers (aiobotocore, asyncpg, aiosqlite) are tested on it."""
    return "asyncio", {"loop_factory": loop_factory(choice_from_env())}


class FilesystemHarness:
    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_store(self, **_options: Any) -> BlobStore:
        return FilesystemBlobStore(self.root)

    async def leftovers(self, area: str = "uploads") -> list[str]:
        base = self.root / area
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    async def close(self) -> None:
        pass


class S3Harness:
    name = "s3"

    def __init__(self, seaweedfs: SeaweedFS) -> None:
        self.seaweedfs = seaweedfs
        self.prefix = f"backends/{uuid.uuid4().hex[:12]}/"
        self._stores: list[Any] = []

    def new_store(self, **options: Any) -> BlobStore:
        from dockyard.storage.s3 import S3BlobStore, S3Options

        settings = {"part_size": 5 * MiB, "copy_part_size": 5 * MiB, **options}
        store = S3BlobStore(
            S3Options(
                bucket=self.seaweedfs.bucket,
                prefix=self.prefix,
                endpoint_url=self.seaweedfs.endpoint,
                region=self.seaweedfs.region,
                access_key_id=self.seaweedfs.access_key,
                secret_access_key=self.seaweedfs.secret_key,
                addressing_style="path",
                **settings,
            )
        )
        self._stores.append(store)
        return store

    async def leftovers(self, area: str = "uploads") -> list[str]:
        """Objects and multipart uploads in progress under ``<prefix><area>/``."""
        keys = await anyio.to_thread.run_sync(self.seaweedfs.keys, f"{self.prefix}{area}/")
        return [k[len(self.prefix) :] for k in keys]

    async def close(self) -> None:
        for store in self._stores:
            await store.close()


class MetadataHarness:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self._stores: list[SqlMetadataStore] = []

    async def new_store(self) -> SqlMetadataStore:
        store = SqlMetadataStore(self.url)
        await store.open()
        self._stores.append(store)
        return store

    async def close(self) -> None:
        for store in self._stores:
            await store.close()


@pytest.fixture(params=["filesystem", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    harness: Any
    if request.param == "s3":
        harness = S3Harness(request.getfixturevalue("seaweedfs"))
    else:
        harness = FilesystemHarness(tmp_path / "blobs")
    yield harness
    await harness.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def metadata(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataHarness]:
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        harness = MetadataHarness("postgresql", pg.url(pg.create_database("backends")))
    else:
        harness = MetadataHarness("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'meta' / 'metadata.db'}")
    yield harness
    await harness.close()


class Nodes:
    """Registry cores over the same storage and database, each with adapters of its own."""

    def __init__(self, storage: Any, metadata: MetadataHarness) -> None:
        self.storage = storage
        self.metadata = metadata

    async def node(self, **storage_options: Any) -> Registry:
        return Registry(self.storage.new_store(**storage_options), await self.metadata.new_store())


@pytest.fixture
def nodes(storage: Any, metadata: MetadataHarness) -> Nodes:
    return Nodes(storage, metadata)
