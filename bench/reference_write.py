"""The P3/P6 reference: what a blob push must at least cost, done by one plain Python process.

Reads each source file in 1 MiB chunks, hashes with hashlib.sha256, writes to a new file in
DEST_DIR (the same filesystem as dockyard's data dir) and fsyncs it before the clock stops —
the durability dockyard promises before its 201. Prints one line of JSON:
``{"seconds": [per file...], "bytes": [per file...]}``; interpreter start-up is not timed.

The copies stay until the caller removes DEST_DIR: dockyard keeps its blobs, so both sides
fill fresh page cache. (Deleting each copy at once would hand the next one recycled pages,
which on a VM with free page reporting is several times cheaper than fresh ones.)

    python bench/reference_write.py DEST_DIR SOURCE [SOURCE ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

CHUNK = 1 << 20


def hash_write_fsync(source: str, dest: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    size = 0
    with open(source, "rb", buffering=0) as src, open(dest, "wb", buffering=0) as out:
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            h.update(data)
            out.write(data)
            size += len(data)
        os.fsync(out.fileno())
    return time.perf_counter() - t0, size, h.hexdigest()


def main(argv: list[str]) -> None:
    dest_dir, sources = argv[0], argv[1:]
    seconds, sizes = [], []
    for i, source in enumerate(sources):
        dest = os.path.join(dest_dir, f"reference-{os.getpid()}-{i}")
        elapsed, size, _ = hash_write_fsync(source, dest)
        seconds.append(elapsed)
        sizes.append(size)
    print(json.dumps({"seconds": seconds, "bytes": sizes}))


if __name__ == "__main__":
    main(sys.argv[1:])
