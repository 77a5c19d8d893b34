"""Direct-to-bucket uploads vs the ordinary path (docs/direct-uploads.md), on real SeaweedFS.

Three ``dockyard serve`` nodes (one worker each) over one SeaweedFS bucket and one PostgreSQL
database, as the multi-node tests run them. Each round ``dockyard push``es a fresh image with a
1 GiB random layer to node 1, three ways, interleaved (A B C, then C B A, ...):

- **node**: ``--no-direct``: every byte in through the node (16 MiB ``PATCH``es) and out to the bucket;
- **direct x1**: parts straight to the bucket, one at a time (``--jobs 1``);
- **direct x4**: four parts in flight (``--jobs 4``).

For each: wall time of the push, request body bytes all nodes received
(``dockyard_http_request_bytes_total``, every route) and CPU seconds all nodes' processes used
(``/proc/<pid>/stat``), per pushed GiB. A direct push's node CPU is mostly the verifying read:
the node reads the object once from the bucket to hash it (1 GiB from the store per GiB pushed).

    .venv/bin/python bench/direct_uploads.py [--size 1GiB] [--rounds 2] [--out bench/results-direct.md]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.client.support import build_big_image  # noqa: E402
from tests.support.server import DockyardServer  # noqa: E402
from tests.support.services import PostgresServer, SeaweedFS, SharedBackends  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
WAYS = {
    "node": ["--no-direct", "--chunk-size", "16MiB"],
    "direct x1": ["--jobs", "1", "--chunk-size", "16MiB"],
    "direct x4": ["--jobs", "4", "--chunk-size", "16MiB"],
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)\s*([KMG]i?B?)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB}[unit]


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            found += process_tree(int(kid))
    return found


def cpu_seconds(nodes: list[DockyardServer]) -> float:
    total = 0
    for node in nodes:
        assert node.process is not None
        for pid in process_tree(node.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def received_bytes(nodes: list[DockyardServer]) -> float:
    total = 0.0
    for node in nodes:
        text = httpx.get(f"{node.url}/metrics", timeout=60).text
        total += sum(
            float(v) for v in re.findall(r"^dockyard_http_request_bytes_total\{[^}]*\} (\S+)$", text, re.M)
        )
    return total


def push(layout: Path, node: DockyardServer, repository: str, args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "push", f"{layout}:latest", f"{node.host}/{repository}:v1",
         "--json", *args],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"push failed: {done.stderr[-2000:]}")
    hows = set(re.findall(r'"how": "([a-z-]+)"', done.stdout))
    return elapsed, ",".join(sorted(hows))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=GiB, help="layer size [1GiB]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three ways [2]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-direct.md")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dockyard-direct-bench-"))
    seaweedfs = SeaweedFS(work / "seaweedfs").start()
    postgres = PostgresServer().start()
    nodes: list[DockyardServer] = []
    rows: list[tuple[str, float, float, float, str]] = []
    try:
        env = SharedBackends(seaweedfs, postgres).server_env(redirect=True)
        nodes = [DockyardServer(work / f"node{i}", workers=1, env=env) for i in (1, 2, 3)]
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(DockyardServer.start, nodes))
        order = list(WAYS)
        for round_ in range(options.rounds):
            for way in order if round_ % 2 == 0 else reversed(order):
                layout = work / "layout"
                build_big_image(layout, options.size)  # fresh random bytes: nothing deduplicated
                cpu0, bytes0 = cpu_seconds(nodes), received_bytes(nodes)
                elapsed, how = push(layout, nodes[0], f"bench/r{round_}-{way.replace(' ', '')}", WAYS[way])
                cpu, received = cpu_seconds(nodes) - cpu0, received_bytes(nodes) - bytes0
                rows.append((way, elapsed, received, cpu, how))
                print(
                    f"round {round_ + 1} {way:>9}: {elapsed:6.1f} s, nodes received "
                    f"{received / 1024:10.1f} KiB, node CPU {cpu:6.2f} s ({how})",
                    flush=True,
                )
                shutil.rmtree(layout)
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(DockyardServer.stop, nodes))
        seaweedfs.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    gib = options.size / GiB
    lines = [
        "# Direct-to-bucket uploads vs the ordinary path",
        "",
        f"`python bench/direct_uploads.py --size {options.size // MiB}MiB --rounds {options.rounds}`; "
        f"3 nodes (1 worker each), SeaweedFS and PostgreSQL on loopback, {os.cpu_count()} cores "
        f"(load average at the end {os.getloadavg()[0]:.1f}). Figures per pushed GiB, median of the rounds.",
        "",
        "| way | wall s/GiB | node bytes received /GiB | share of the blob | node CPU s/GiB | blobs went |",
        "|---|---|---|---|---|---|",
    ]
    for way in WAYS:
        mine = [r for r in rows if r[0] == way]
        if not mine:
            continue
        wall = statistics.median(r[1] for r in mine) / gib
        got = statistics.median(r[2] for r in mine) / gib
        cpu = statistics.median(r[3] for r in mine) / gib
        share = 100 * got / GiB
        lines.append(
            f"| {way} | {wall:.1f} | {got / 1024:.1f} KiB | {share:.4f} % | {cpu:.2f} | {mine[0][4]} |"
        )
    lines += ["", "Each round:", ""]
    lines += [f"- {w}: {e:.1f} s, {r / 1024:.1f} KiB received, {c:.2f} CPU s ({h})" for w, e, r, c, h in rows]
    options.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
