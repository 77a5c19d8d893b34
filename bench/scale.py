"""Scale: garbage collection of many manifests (P10) and the server's memory (P11), beside CNCF
Distribution in the same run.

    . .venv/bin/activate
    python bench/scale.py --distribution /path/to/registry     # writes bench/results-scale.md
    python bench/scale.py --only P11 --rounds 1                # one workload, one round

P10: 20,000 small images (a config, a 200-byte layer, the manifest) in repositories of 100, every
other one untagged, written straight into each registry's stores (bench/scaledata.py); then
dockyard's online collection (``dockyard gc --delete-untagged`` while its server runs and a client
pushes images, timed against the same client's pushes before) and Distribution's offline
``registry garbage-collect --delete-untagged``; the same at 1,000 for the per-manifest cost.
Rounds interleave the two (A B A B); ratios are medians of per-round ratios.

P11: the server with 2 workers, idle (RSS and PSS of every process), and each worker's peak RSS
while 16 clients push 4 MiB images at once; Distribution idle beside it.

P12: metadata at scale. 1,000,000 tags in 100,000 repositories (one image each, ten tags on it)
and, as the reference in the same run, 10,000 tags in 1,000 repositories, written straight into
the schema's tables (bench/scaledata.py); first pages of the catalog and of a tag list and a
manifest GET by tag timed one request at a time, then ``dockyard fsck`` and ``dockyard gc``
timed with their peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import aiohttp
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("bench/scale.py needs the project's venv (aiohttp, dockyard): . .venv/bin/activate")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pushclient
from distribution import add_distribution_option, filesystem_storage, start_distribution, stop
from procs import Dockyard, children, rss_kib
from scaledata import (
    OCI_MANIFEST,
    count_files,
    images,
    populate_distribution,
    populate_dockyard,
    populate_tags,
)

BENCH_DIR = Path(__file__).resolve().parent
MiB = 1024 * 1024
PER_REPOSITORY = 100


def log(text: str) -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


GNU_TIME = "/usr/bin/time"


def timed_child(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, stdout_path: Path | None = None
) -> tuple[float, float, int]:
    """Run ``args`` to the end: (wall seconds, peak RSS MiB, exit status).

    The peak is GNU time's ``%M``, the child's own high-water mark. Not ``wait4``'s ``ru_maxrss``
    here: Python starts children with vfork, and a vforked child keeps its parent's high-water
    RSS across exec, so that would report this bench process's own size whenever it is larger
    (it was: 164 MiB for both fsck and gc at 10,000 tags, the bench's size after P11)."""
    peak_file = log_path.with_suffix(".peak")
    with open(log_path, "ab") as errors, open(stdout_path or log_path, "ab") as out:
        begun = time.perf_counter()
        status = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", str(peak_file), *args], stdout=out, stderr=errors, env=env
        ).returncode
        wall = time.perf_counter() - begun
    peak_kib = int(peak_file.read_text().split()[-1])  # after "Command exited with …" if it failed
    return wall, peak_kib / 1024, status


# -- P10 --------------------------------------------------------------------------------------------


@dataclass
class GcRun:
    wall: float
    peak_mib: float
    gc_seconds: float = 0.0  # dockyard: the collection itself, from its report
    report: dict[str, Any] = field(default_factory=dict)
    idle_ms: list[float] = field(default_factory=list)
    during_ms: list[float] = field(default_factory=list)


def dockyard_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}


class Pusher:
    """Pushes small images one after another on its own thread and loop; keeps each latency."""

    def __init__(self, base: str, repo: str) -> None:
        self.base, self.repo = base, repo
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._seed = int(time.time() * 1000)

    async def _run(self) -> None:
        async with pushclient.new_session(4) as http:
            while not self._stop.is_set():
                self._seed += 1
                begun = time.perf_counter()
                try:
                    await pushclient.push_manifest(
                        http, self.base, self.repo, f"live{self._seed}", self._seed
                    )
                except (pushclient.PushError, aiohttp.ClientError) as exc:
                    self.failures.append(str(exc))
                    continue
                self.latencies.append((time.perf_counter() - begun) * 1000)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[float]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.latencies


def gc_dockyard(work: Path, manifests: int, seed: int, pushes: bool) -> GcRun:
    data = work / f"dockyard-{manifests}"
    shutil.rmtree(data, ignore_errors=True)
    populate_dockyard(data, list(images(manifests, PER_REPOSITORY, seed)), age=7200)
    server = Dockyard(data, work / "dockyard.log")
    server.start_timeout = 300.0
    idle: list[float] = []
    pusher: Pusher | None = None
    exe = str(Path(sys.executable).with_name("dockyard"))
    out = work / "gc.json"
    try:
        if pushes:
            server.start()
            warm = Pusher(server.base, "live/idle")
            warm.start()
            time.sleep(4.0)
            while len(warm.latencies) < 13 and not warm.failures:  # ten after the first three
                time.sleep(0.5)
            idle = warm.stop()[3:]  # the first pushes warm the connections and the workers
            if warm.failures:
                raise RuntimeError(f"pushes failed before gc: {warm.failures[:3]}")
            pusher = Pusher(server.base, "live/during")
            pusher.start()
        args = [exe, "gc", "--data-dir", str(data), "--delete-untagged", "--json"]
        out.unlink(missing_ok=True)
        wall, peak, status = timed_child(args, work / "gc.log", dockyard_env(), stdout_path=out)
        during = pusher.stop() if pusher is not None else []
        if status != 0:
            raise RuntimeError(f"dockyard gc exited {status}: {(work / 'gc.log').read_text()[-2000:]}")
        if pusher is not None and pusher.failures:
            raise RuntimeError(f"pushes failed during gc: {pusher.failures[:3]}")
    finally:
        if pusher is not None:
            pusher.stop()
        server.stop()
    report = json.loads(out.read_text())
    expected = (manifests // 2, manifests // 2 * 3)  # untagged manifests; their config, layer, bytes
    got = (report["manifests_deleted"], report["blobs_deleted"])
    if got != expected:
        raise RuntimeError(f"dockyard gc deleted {got} (manifests, blobs), expected {expected}")
    shutil.rmtree(data, ignore_errors=True)
    return GcRun(wall, peak, report["duration_seconds"], report, idle, during)


def gc_distribution(binary: Path, work: Path, manifests: int, seed: int) -> GcRun:
    root = work / f"distribution-{manifests}"
    shutil.rmtree(root, ignore_errors=True)
    populate_distribution(root, list(images(manifests, PER_REPOSITORY, seed)))
    blobs = root / "docker" / "registry" / "v2" / "blobs"
    before = count_files(blobs)
    config = work / "distribution-gc.yml"
    config.write_text(
        json.dumps({"version": 0.1, "log": {"level": "error"}, "storage": filesystem_storage(root)})
    )
    wall, peak, status = timed_child(
        [str(binary), "garbage-collect", "--delete-untagged", str(config)], work / "distribution-gc.log"
    )
    if status != 0:
        raise RuntimeError(f"distribution garbage-collect exited {status}")
    freed = before - count_files(blobs)
    if freed != manifests // 2 * 3:
        raise RuntimeError(f"distribution freed {freed} blobs, expected {manifests // 2 * 3}")
    shutil.rmtree(root, ignore_errors=True)
    return GcRun(wall, peak)


def p10(args: argparse.Namespace, work: Path) -> list[str]:
    big, small = args.manifests, args.small
    rounds: list[dict[str, GcRun]] = []
    for r in range(args.rounds):
        seed = r * 7919 + 1
        found: dict[str, GcRun] = {}
        order: list[tuple[str, Callable[[], GcRun]]] = [
            ("dockyard", functools.partial(gc_dockyard, work, big, seed, pushes=True)),
            ("dockyard-small", functools.partial(gc_dockyard, work, small, seed, pushes=True)),
        ]
        if args.distribution:
            binary = args.distribution
            order.insert(1, ("distribution", functools.partial(gc_distribution, binary, work, big, seed)))
            order.append(
                ("distribution-small", functools.partial(gc_distribution, binary, work, small, seed))
            )
        for name, measure in order:
            found[name] = measure()
            run = found[name]
            log(
                f"P10 round {r + 1} {name}: wall {run.wall:.2f} s (collection {run.gc_seconds:.2f} s), "
                f"peak RSS {run.peak_mib:.0f} MiB"
                + (
                    f", pushes {median(run.idle_ms):.1f} ms idle / {median(run.during_ms):.1f} ms during "
                    f"({len(run.during_ms)} pushes)"
                    if run.during_ms
                    else ""
                )
            )
        rounds.append(found)
    d = [f["dockyard"] for f in rounds]
    ds = [f["dockyard-small"] for f in rounds]
    scaling = median([(a.gc_seconds / big) / (b.gc_seconds / small) for a, b in zip(d, ds, strict=True)])
    peak = max(run.peak_mib for run in d)
    latency = median([median(run.during_ms) / median(run.idle_ms) for run in d])
    lines = [
        f"### P10 garbage collection, {big:,} manifests in repositories of {PER_REPOSITORY}, half untagged",
        "",
        "| | dockyard (online) | Distribution (offline) | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    if args.distribution:
        dist = [f["distribution"] for f in rounds]
        distsmall = [f["distribution-small"] for f in rounds]
        ratio = median([a.wall / b.wall for a, b in zip(d, dist, strict=True)])
        ratio_small = median([a.wall / b.wall for a, b in zip(ds, distsmall, strict=True)])
        lines += [
            f"| wall time, {big:,} (whole `gc` process, per round) | "
            + ", ".join(f"{run.wall:.2f} s" for run in d)
            + " | "
            + ", ".join(f"{run.wall:.2f} s" for run in dist)
            + f" | {ratio:.3g}x | ≤ 0.5x | {verdict(ratio <= 0.5)} |",
            f"| wall time, {small:,} | "
            + ", ".join(f"{run.wall:.2f} s" for run in ds)
            + " | "
            + ", ".join(f"{run.wall:.2f} s" for run in distsmall)
            + f" | {ratio_small:.3g}x | | |",
            f"| peak RSS, {big:,} | {peak:.0f} MiB | {max(run.peak_mib for run in dist):.0f} MiB | "
            f"| ≤ 150 MiB | {verdict(peak <= 150)} |",
        ]
    else:
        lines += [
            f"| wall time, {big:,} | "
            + ", ".join(f"{run.wall:.2f} s" for run in d)
            + " | (no --distribution) | | | |",
            f"| peak RSS, {big:,} | {peak:.0f} MiB | | | ≤ 150 MiB | {verdict(peak <= 150)} |",
        ]
    lines += [
        f"| collection time per manifest, {big:,} vs {small:,} | "
        + ", ".join(f"{run.gc_seconds * 1e6 / big:.0f} µs" for run in d)
        + " vs "
        + ", ".join(f"{run.gc_seconds * 1e6 / small:.0f} µs" for run in ds)
        + f" | | {scaling:.3g}x | ≤ 1.2x | {verdict(scaling <= 1.2)} |",
        "| image push (5 requests) during the collection vs idle, median | "
        + ", ".join(f"{median(run.during_ms):.1f} vs {median(run.idle_ms):.1f} ms" for run in d)
        + f" | | {latency:.3g}x | ≤ 2x | {verdict(latency <= 2.0)} |",
        "",
        f"Collection time is the report's `duration_seconds` (the work, without the process's start); "
        f"the wall time is the whole `dockyard gc` process. Deleted per round: "
        f"{d[0].report['manifests_deleted']:,} manifests, {d[0].report['links_deleted']:,} links, "
        f"{d[0].report['blobs_deleted']:,} blobs (Distribution: the same number of blobs, checked).",
        "",
    ]
    return lines


# -- P11 --------------------------------------------------------------------------------------------


def server_memory(pids: list[int]) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MiB over ``pids``."""
    rss = sum(rss_kib(p) or 0 for p in pids) / 1024
    pss = sum(pss_kib(p) or 0 for p in pids) / 1024
    return rss, pss


async def _push_load(base: str, clients: int, seconds: float) -> int:
    blob = os.urandom(4 * MiB)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with pushclient.new_session(2) as http:
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                n += 1
                data = blob[:-8] + f"{i:04d}{n:04d}".encode()
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                await pushclient.push_small(http, base, f"load/c{i}", data, digest)
                done += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return done


class PeakSampler:
    """The highest RSS (KiB) any of ``pids`` reaches, sampled every 0.1 s on a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak = pids, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max([self.peak, *(rss_kib(pid) or 0 for pid in self.pids)])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def p11(args: argparse.Namespace, work: Path) -> list[str]:
    rows: list[
        tuple[float, float, float, float, float]
    ] = []  # supervisor, workers, total rss, pss, loaded peak
    dist_idle: list[float] = []
    for r in range(args.rounds):
        data = work / "p11"
        shutil.rmtree(data, ignore_errors=True)
        server = Dockyard(data, work / "dockyard-p11.log")
        server.start_timeout = 300.0
        try:
            server.start()
            time.sleep(3.0)
            workers = children(server.pid)
            supervisor = (rss_kib(server.pid) or 0) / 1024
            rss, pss = server_memory([server.pid, *workers])
            sampler = PeakSampler(workers)
            pushed = asyncio.run(_push_load(server.base, 16, args.load_seconds))
            loaded = sampler.stop() / 1024
            rows.append((supervisor, rss - supervisor, rss, pss, loaded))
            log(
                f"P11 round {r + 1}: idle supervisor {supervisor:.0f} MiB, all {rss:.0f} MiB RSS / "
                f"{pss:.0f} MiB PSS ({len(workers)} workers); 16 pushers ({pushed} x 4 MiB): worker peak "
                f"{loaded:.0f} MiB"
            )
        finally:
            server.stop()
        if args.distribution:
            node = start_distribution(args.distribution, work, filesystem_storage(work / "dist-p11"))
            try:
                time.sleep(2.0)
                dist_idle.append(server_memory([node.proc.pid])[0])
            finally:
                stop(node)
    total = median([row[2] for row in rows])
    pss = median([row[3] for row in rows])
    loaded = max(row[4] for row in rows)
    reference = f"{median(dist_idle):.0f} MiB RSS" if dist_idle else "(no --distribution)"
    return [
        "### P11 memory, `--workers 2` (filesystem + SQLite)",
        "",
        "| | dockyard | Distribution | target | |",
        "|---|---|---|---|---|",
        f"| idle, all processes, sum of RSS (supervisor {median([row[0] for row in rows]):.0f} MiB) "
        f"| {total:.0f} MiB | {reference} | ≤ 150 MiB | {verdict(total <= 150)} |",
        f"| idle, all processes, sum of PSS (shared pages counted once) | {pss:.0f} MiB | | ≤ 150 MiB "
        f"| {verdict(pss <= 150)} |",
        f"| peak RSS of a worker, 16 concurrent pushes of 4 MiB for {args.load_seconds:g} s "
        f"| {loaded:.0f} MiB | | ≤ 100 MiB | {verdict(loaded <= 100)} |",
        "",
    ]


# -- P12 --------------------------------------------------------------------------------------------


@dataclass
class MetaRun:
    tags: int
    populate_s: float
    db_mib: float
    latency_ms: dict[str, float]  # request -> median
    fsck: tuple[float, float, int]  # wall s, peak RSS MiB, exit status
    gc: tuple[float, float, int]


def request_latencies(base: str, paths: list[tuple[str, dict[str, str]]], count: int) -> dict[str, float]:
    """Median milliseconds of each request, one at a time on one keep-alive connection, the
    requests taking turns (a drift of the machine weighs on all alike); 10% warm-up first."""
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    found: dict[str, list[float]] = {path: [] for path, _ in paths}
    warm = max(1, count // 10)
    for n in range(warm + count):
        for path, headers in paths:
            begun = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            if n >= warm:
                found[path].append((time.perf_counter() - begun) * 1000)
    conn.close()
    return {path: median(values) for path, values in found.items()}


def meta_run(work: Path, repositories: int, tags_per_repository: int, count: int) -> MetaRun:
    data = work / f"meta-{repositories}"
    shutil.rmtree(data, ignore_errors=True)
    begun = time.perf_counter()
    tags = populate_tags(data, repositories, tags_per_repository, age=7200)
    populate_s = time.perf_counter() - begun
    db_mib = (data / "metadata.db").stat().st_size / MiB
    middle = f"meta/r{repositories // 2:06d}"
    paths = {
        "catalog": ("/v2/_catalog?n=100", {}),
        "catalog-middle": (f"/v2/_catalog?n=100&last={middle}", {}),
        "tags": (f"/v2/{middle}/tags/list?n=100", {}),
        "manifest": (f"/v2/{middle}/manifests/v5", {"Accept": OCI_MANIFEST}),
    }
    server = Dockyard(data, work / "dockyard-p12.log")
    server.start_timeout = 300.0
    try:
        server.start()
        by_path = request_latencies(server.base, list(paths.values()), count)
    finally:
        server.stop()
    latency = {name: by_path[path] for name, (path, _) in paths.items()}
    exe = str(Path(sys.executable).with_name("dockyard"))
    env = dockyard_env()
    fsck = timed_child([exe, "fsck", "--data-dir", str(data), "--json"], work / "fsck.log", env)
    gc = timed_child([exe, "gc", "--data-dir", str(data), "--json"], work / "gc-p12.log", env)
    shutil.rmtree(data, ignore_errors=True)
    return MetaRun(tags, populate_s, db_mib, latency, fsck, gc)


def p12(args: argparse.Namespace, work: Path) -> list[str]:
    small = meta_run(work, args.meta_repositories // 100, 10, args.meta_requests)
    log(f"P12 {small.tags:,} tags: {small.latency_ms}, fsck {small.fsck}, gc {small.gc}")
    big = meta_run(work, args.meta_repositories, 10, args.meta_requests)
    log(f"P12 {big.tags:,} tags: {big.latency_ms}, fsck {big.fsck}, gc {big.gc}")
    for name, run in (("fsck", big.fsck), ("gc", big.gc)):
        if run[2] != 0:
            raise RuntimeError(f"dockyard {name} exited {run[2]} at {big.tags:,} tags (see {work})")
    lines = [
        f"### P12 metadata at scale, {big.tags:,} tags in {args.meta_repositories:,} repositories",
        "",
        f"Reference: the same registry with {small.tags:,} tags in {args.meta_repositories // 100:,} "
        f"repositories, same run. Rows written straight into the schema (populate {big.populate_s:.0f} s; "
        f"metadata.db {big.db_mib:.0f} MiB against {small.db_mib:.1f} MiB). Latencies: median of "
        f"{args.meta_requests} requests one at a time, the four taking turns.",
        "",
        f"| | {big.tags:,} tags | {small.tags:,} tags | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "catalog": ("`_catalog?n=100`, first page", True),
        "catalog-middle": ("`_catalog?n=100&last=…`, a page from the middle", False),
        "tags": ("`tags/list?n=100`, first page", True),
        "manifest": ("manifest `GET` by tag", False),
    }
    for name, (label, targeted) in labels.items():
        ratio = big.latency_ms[name] / small.latency_ms[name]
        target = f"≤ 2x | {verdict(ratio <= 2.0)}" if targeted else "report | "
        lines.append(
            f"| {label} | {big.latency_ms[name]:.2f} ms | {small.latency_ms[name]:.2f} ms "
            f"| {ratio:.3g}x | {target} |"
        )
    for name, b, sm in (("fsck", big.fsck, small.fsck), ("gc", big.gc, small.gc)):
        lines.append(
            f"| `dockyard {name}`: wall, peak RSS | {b[0]:.1f} s, {b[1]:.0f} MiB "
            f"| {sm[0]:.1f} s, {sm[1]:.0f} MiB "
            f"| {b[0] / sm[0]:.3g}x time | ≤ 200 MiB | {verdict(b[1] <= 200)} |"
        )
    lines.append("")
    return lines


# -- main -------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_distribution_option(parser)
    parser.add_argument("--only", default="P10,P11,P12", help="workloads, comma-separated (P10, P11, P12)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--manifests", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument(
        "--meta-repositories", type=int, default=100_000, help="P12: repositories (10 tags each)"
    )
    parser.add_argument("--meta-requests", type=int, default=300, help="P12: timed requests of each kind")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results-scale.md")
    args = parser.parse_args()
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit(f"{GNU_TIME} is missing (it measures the collectors' peak RSS): apt-get install -y time")
    wanted = {w.strip().upper() for w in args.only.split(",")}
    work = Path(tempfile.mkdtemp(prefix="dockyard-scale-", dir=args.workdir))
    lines = [
        "# Scale results",
        "",
        f"`python bench/scale.py {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {_commit()}.",
        "",
    ]
    try:
        if "P10" in wanted:
            lines += p10(args, work)
        if "P11" in wanted:
            lines += p11(args, work)
        if "P12" in wanted:
            lines += p12(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines)
    args.out.write_text(text)
    log(text)
    return 1 if "FAIL" in text else 0


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
