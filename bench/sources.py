"""Blob contents for the benchmarks: synthetic streams and files, each with a known digest.

Content comes from a random pool (read once from ``os.urandom``) sliced at a chunk-dependent
offset, with a 16-byte header (the blob's seed and the chunk's index) at the start of every
1 MiB chunk. That is as fast as ``memcpy``, never compresses, and gives every blob its own
digest, so the registry can never deduplicate one run's blob against another's.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
_POOL_SIZE = 8 * MiB
_pool: bytes | None = None


def _random_pool() -> bytes:
    global _pool
    if _pool is None:
        _pool = os.urandom(_POOL_SIZE + CHUNK)
    return _pool


def synthetic_chunk(seed: int, index: int, length: int = CHUNK) -> bytes:
    """Chunk ``index`` of blob ``seed``: unique header, then pseudo-random bytes."""
    pool = _random_pool()
    header = struct.pack(">QQ", seed, index)
    start = (index * 7919 * 4096 + seed * 104729) % _POOL_SIZE
    body = pool[start : start + max(0, length - len(header))]
    return (header + body)[:length]


@dataclass
class Synthetic:
    """A blob that exists only as a generator: ``size`` bytes of blob ``seed``."""

    seed: int
    size: int
    _digest: str | None = None

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in pieces of at most 1 MiB (aligned to the chunk grid)."""
        end = self.size if end is None else end
        pos = start
        while pos < end:
            index, skip = divmod(pos, CHUNK)
            length = min(CHUNK, self.size - index * CHUNK)
            data = synthetic_chunk(self.seed, index, length)
            piece = data[skip : skip + (end - pos)]
            yield piece
            pos += len(piece)

    @property
    def digest(self) -> str:
        """``sha256:<hex>``, computed by a first pass over the stream (≈1.5 GB/s)."""
        if self._digest is None:
            h = hashlib.sha256()
            for data in self.chunks():
                h.update(data)
            self._digest = f"sha256:{h.hexdigest()}"
        return self._digest


@dataclass
class BlobFile:
    """A blob written to a file once; read back in 1 MiB pieces for pushes and references."""

    path: Path
    size: int
    digest: str

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else end
        with open(self.path, "rb", buffering=0) as f:
            f.seek(start)
            pos = start
            while pos < end:
                data = f.read(min(CHUNK, end - pos))
                if not data:
                    raise EOFError(f"{self.path} ends at {pos}, expected {end}")
                pos += len(data)
                yield data

    @classmethod
    def write(cls, path: Path, seed: int, size: int) -> BlobFile:
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for data in Synthetic(seed, size).chunks():
                h.update(data)
                f.write(data)
        return cls(path, size, f"sha256:{h.hexdigest()}")


Source = Synthetic | BlobFile


def run_seed() -> int:
    """A seed base unique to this run (fresh content every run, no dedupe across runs)."""
    return int.from_bytes(os.urandom(6), "big") << 16
