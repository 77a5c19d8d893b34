"""Where the per-request metrics' values live: one table of doubles per worker, in a file that
any worker reads to answer a scrape with the sum over all of them (or in this process's memory
when it serves alone).

A request adds to its record with a few stores into shared memory, with no lock and no system
call: each file has one writer, its worker, and a scrape only reads. (prometheus_client's
multiprocess mode took a lock, a ``getpid`` and a packed write per value, four values per
request: about a tenth of a worker's time on a manifest pulled over HTTPS.)

Layout, native byte order:

- a header of ``HEADER`` bytes: ``MAGIC``, then as doubles the requests in flight now and the
  number of records in use;
- ``CAPACITY`` records of ``RECORD`` bytes: a key (one length byte, then up to ``KEY_BYTES - 1``
  bytes of UTF-8), then ``SLOTS`` doubles, 8-aligned.

A record's key is written before the count that makes it visible, so a scrape never reads a key
half written. Stdlib only: the supervisor imports this (``forget_in_flight``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

DIRECTORY_ENV = "_DOCKYARD_METRICS_DIR"  # set by the supervisor for the workers it forks
PREFIX = "requests_"
SUFFIX = ".db"
MAGIC = b"dyreqv1\x00"
HEADER = 64
KEY_BYTES = 96
SLOTS = 20
RECORD = KEY_BYTES + 8 * SLOTS
CAPACITY = 4096  # records: far more than methods x routes x statuses ever make
SIZE = HEADER + CAPACITY * RECORD  # a sparse file: only the records in use take pages
IN_FLIGHT = 1  # index of the in-flight double (the header's second 8 bytes)
USED = 2  # index of the records-in-use double
OVERFLOW = "other\tother\tother"  # where a key goes that does not fit (never seen in practice)
_VALUES = struct.Struct(f"{SLOTS}d")
_HEADER = struct.Struct("8s2d")
Table = tuple[float, list[tuple[str, tuple[float, ...]]]]  # in flight, (key, values) per record


def shared_directory() -> Path | None:
    found = os.environ.get(DIRECTORY_ENV)
    return Path(found) if found else None


def _path(directory: Path, pid: int) -> Path:
    return directory / f"{PREFIX}{pid}{SUFFIX}"


def _first_value(index: int) -> int:
    """The index, in doubles, of record ``index``'s first value."""
    return (HEADER + index * RECORD + KEY_BYTES) // 8


class ValueTable:
    """This process's records: ``slot(key)`` once per key, then add to ``values[slot + i]``."""

    def __init__(self, directory: Path | None) -> None:
        if directory is None:
            self._map = mmap.mmap(-1, SIZE)
            self._map[: len(MAGIC)] = MAGIC
        else:
            path = _path(directory, os.getpid())
            if not path.exists():
                _create(path)
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
        self.values = memoryview(self._map).cast("d")
        self.values[IN_FLIGHT] = 0.0
        # A pid used again (a worker replaced long after): its predecessor's counts go on.
        self._slots = {key: _first_value(i) for i, key, _ in _records(self._map)}

    def slot(self, key: str) -> int:
        found = self._slots.get(key)
        if found is not None:
            return found
        encoded = key.encode()
        used = int(self.values[USED])
        if len(encoded) >= KEY_BYTES or (used >= CAPACITY - 1 and key != OVERFLOW):
            return self.slot(OVERFLOW)
        start = HEADER + used * RECORD
        self._map[start + 1 : start + 1 + len(encoded)] = encoded
        self._map[start] = len(encoded)
        self.values[USED] = used + 1  # now a scrape reads it
        found = self._slots[key] = _first_value(used)
        return found

    def snapshot(self) -> Table:
        return _table(self._map)


def _create(path: Path) -> None:
    """The file whole (sized, magic written) before it has its name: a scrape never sees less."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
    try:
        os.ftruncate(fd, SIZE)
        os.pwrite(fd, MAGIC, 0)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(fd)


def _table(data: bytes | mmap.mmap) -> Table:
    """The in-flight count and the records of a table's bytes."""
    return _HEADER.unpack_from(data, 0)[1], [(key, values) for _, key, values in _records(data)]


def _records(data: bytes | mmap.mmap) -> Iterator[tuple[int, str, tuple[float, ...]]]:
    if len(data) < HEADER or data[: len(MAGIC)] != MAGIC:
        return
    _, _, used = _HEADER.unpack_from(data, 0)
    for i in range(min(int(used), CAPACITY, (len(data) - HEADER) // RECORD)):
        start = HEADER + i * RECORD
        length = data[start]
        if not 0 < length < KEY_BYTES:
            continue
        try:
            key = bytes(data[start + 1 : start + 1 + length]).decode()
        except UnicodeDecodeError:
            continue
        yield i, key, _VALUES.unpack_from(data, start + KEY_BYTES)


def read_all(directory: Path) -> Iterator[Table]:
    """Every worker's in-flight count and records, the dead workers' included (their in-flight
    count is zeroed when they exit). Files that are not ours, or gone meanwhile, are skipped."""
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER)
                if len(header) < HEADER or header[: len(MAGIC)] != MAGIC:
                    continue
                used = int(_HEADER.unpack_from(header, 0)[2])
                data = header + f.read(min(max(used, 0), CAPACITY) * RECORD)
        except OSError:
            continue
        yield _table(data)


def forget_in_flight(directory: Path, pid: int) -> None:
    """A worker died: its requests are not in flight any more; its counts stay."""
    with contextlib.suppress(OSError):
        fd = os.open(_path(directory, pid), os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack("d", 0.0), IN_FLIGHT * 8)
        finally:
            os.close(fd)
