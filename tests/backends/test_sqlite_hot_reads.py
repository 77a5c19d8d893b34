"""SQLite's pull hot path answers from a per-worker cache that it keeps only while nothing was
committed (metadata/hotreads.py): every commit, by any connection of any process, is seen by the
very next read, also across WAL restarts; and a cached answer is the same object until then."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dockyard.metadata.store import SqlMetadataStore
from dockyard.registry.digests import Digest
from dockyard.registry.ports import ManifestRecord, ManifestRef

pytestmark = pytest.mark.anyio
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ROUNDS = 300

# Another process: for each line it reads, points the tag at the manifest the line names and
# commits (every 25th time restarting the WAL first, as a full checkpoint does), then says so.
COMMITTER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    for i, line in enumerate(sys.stdin):
        if i % 25 == 0:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(
            "UPDATE tags SET digest = ? WHERE repository = 'app' AND name = 'latest'", (line.strip(),)
        )
        print("ok", flush=True)
    """
)


def d(text: str) -> Digest:
    return Digest("sha256", hashlib.sha256(text.encode()).hexdigest())


async def put(store: SqlMetadataStore, digest: Digest, tags: list[str]) -> None:
    await store.put_manifest(
        "app", ManifestRecord(digest, OCI_MANIFEST, 100), [ManifestRef(d("layer"), "blob")], tags
    )


async def test_a_commit_by_another_process_is_seen_by_the_next_read(tmp_path: Path) -> None:
    database = tmp_path / "metadata.db"
    store = SqlMetadataStore(f"sqlite+aiosqlite:///{database}")
    await store.open()
    try:
        digests = [d(f"m{i}") for i in range(3)]
        await store.link_blob("app", d("layer"), 10)
        for digest in digests:
            await put(store, digest, [])
        await put(store, digests[0], ["latest"])
        first = await store.resolve_tag("app", "latest")
        assert first is not None and first.digest == digests[0]
        assert await store.resolve_tag("app", "latest") is first  # cached while nothing changes

        committer = subprocess.Popen(  # noqa: ASYNC220 - lock-step with the reads, on purpose
            [sys.executable, "-c", COMMITTER, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert committer.stdin is not None and committer.stdout is not None
        try:
            for i in range(ROUNDS):
                expected = digests[(i + 1) % len(digests)]
                committer.stdin.write(f"{expected}\n")
                committer.stdin.flush()
                assert committer.stdout.readline() == "ok\n"
                for _ in range(3):  # the first read after the commit, and those after it
                    found = await store.resolve_tag("app", "latest")
                    assert found is not None and found.digest == expected, (i, found)
        finally:
            committer.stdin.close()
            assert committer.wait(timeout=30) == 0
        # This process's own writes, through the store, are seen the same way.
        await put(store, digests[2], ["latest"])
        found = await store.resolve_tag("app", "latest")
        assert found is not None and found.digest == digests[2]
    finally:
        await store.close()
    with sqlite3.connect(database) as conn:  # and the database is sound after all of it
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
