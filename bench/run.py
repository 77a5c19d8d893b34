"""dockyard's benchmark suite: every workload and its reference, in one run, under 5 minutes.

    . .venv/bin/activate
    python bench/run.py            # full sizes; writes bench/results-latest.md
    python bench/run.py --quick    # small sizes, ~1 minute; writes bench/results-quick.md

Starts its own ``dockyard serve`` (default settings and worker count, fresh temp data dir) and
its own nginx, runs P1-P7 (see bench/README.md), prints figure, reference, ratio and target for
each, and removes everything it created. It installs nothing: missing tools are named with the
``apt-get install`` line that provides them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import aiohttp
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("bench/run.py needs the project's venv (aiohttp, dockyard): . .venv/bin/activate")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profiling
import pushclient
from procs import (
    CpuMeter,
    Dockyard,
    Nginx,
    RssSampler,
    check_tools,
    curl_speed,
    curl_time,
    hey,
    wrk,
)
from profiling import strace_available
from sources import BlobFile, GiB, MiB, Synthetic, run_seed

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORKLOADS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")
MB = 1e6  # throughput is in MB/s (10^6 bytes); sizes are in MiB/GiB


@dataclass(frozen=True)
class Sizes:
    p1_blob: int
    p3_blob: int
    repeats: int
    p4_blob: int
    p5_blob: int
    p5_chunk: int
    p6_clients: int
    p6_blob: int
    rate_seconds: float  # wrk duration for P2 and P7
    connections: int


FULL = Sizes(512 * MiB, 256 * MiB, 3, 4 * GiB, 1 * GiB, 10 * MiB, 16, 64 * MiB, 10.0, 32)
QUICK = Sizes(64 * MiB, 32 * MiB, 3, 512 * MiB, 128 * MiB, 10 * MiB, 16, 8 * MiB, 3.0, 32)


def human(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


@dataclass
class Row:
    workload: str
    dockyard: str
    reference: str
    ratio: str
    target: str
    verdict: str  # PASS, FAIL, report, skipped
    noise: str = ""  # CPU used by other processes on the machine while it ran


@dataclass
class Run:
    args: argparse.Namespace
    sizes: Sizes
    work: Path
    seed: int = field(default_factory=run_seed)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    server: Dockyard | None = None
    nginx: Nginx | None = None
    sampler: RssSampler | None = None
    page_cache_mbps: float | None = None
    worker_pids: list[int] = field(default_factory=list)
    p1_digest: str | None = None
    manifest_digest: str | None = None
    _next_seed: int = 0

    def fresh_seed(self) -> int:
        self._next_seed += 1
        return self.seed + self._next_seed

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  note: {text}")

    @property
    def base(self) -> str:
        assert self.server is not None
        return self.server.base


def log(text: str) -> None:
    print(text, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_text(value: float | None) -> str:
    """Four significant digits: 0.1485x or 0.7996x must not print as the target they miss."""
    return "—" if value is None else f"{value:.4g}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class _Profiled:
    """py-spy on every worker for the length of one workload (``--profile`` only)."""

    def __init__(self, run: Run, label: str) -> None:
        self.run, self.label = run, label
        self._cm: contextlib.AbstractContextManager[list[Path]] | None = None
        self._paths: list[Path] = []
        self._t0 = 0.0

    def __enter__(self) -> None:
        if self.run.args.profile and self.run.server is not None:
            self._cm = profiling.record(self.run.server.workers(), self.run.work / "profiles", self.label)
            self._paths = self._cm.__enter__()
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if self._cm is None:
            return
        seconds = time.perf_counter() - self._t0
        self._cm.__exit__(*exc)
        text = f"{self.label} ({seconds:.1f} s)\n" + profiling.report(self._paths, seconds)
        self.run.profiles.append(text)
        log(text)


# -- setup ----------------------------------------------------------------------------------------------


async def setup_p1_blob(run: Run, http: aiohttp.ClientSession) -> None:
    if run.p1_digest is not None:
        return
    blob = Synthetic(run.fresh_seed(), run.sizes.p1_blob)
    log(f"setup: pushing the {human(blob.size)} P1 blob")
    await pushclient.push_monolithic(http, run.base, "bench/p1", blob)
    run.p1_digest = blob.digest


async def setup_manifest(run: Run, http: aiohttp.ClientSession) -> None:
    if run.manifest_digest is not None:
        return
    _, digest = await pushclient.push_manifest(http, run.base, "bench/p2", "latest", run.fresh_seed())
    run.manifest_digest = digest


def setup_nginx(run: Run) -> Nginx:
    if run.nginx is None:
        assert run.server is not None and run.p1_digest and run.manifest_digest
        blob = run.server.blob_path(run.p1_digest)
        manifest = run.server.blob_path(run.manifest_digest)
        if not blob.exists() or not manifest.exists():
            raise RuntimeError(f"expected dockyard's files at {blob} and {manifest}")
        run.nginx = Nginx(run.work / "nginx", blob, manifest)
        run.nginx.start()
    return run.nginx


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MiB):
            pass


# -- workloads --------------------------------------------------------------------------------------------


async def p1_get_blob(run: Run, http: aiohttp.ClientSession) -> None:
    await setup_p1_blob(run, http)
    await setup_manifest(run, http)
    nginx = setup_nginx(run)
    assert run.server and run.p1_digest
    size = run.sizes.p1_blob
    path = run.server.blob_path(run.p1_digest)
    warm(path)
    url = f"{run.base}/v2/bench/p1/blobs/{run.p1_digest}"
    ours: list[float] = []
    theirs: list[float] = []
    with _Profiled(run, "P1"):
        for _ in range(run.sizes.repeats):
            for target, results in ((url, ours), (f"{nginx.base}/blob", theirs)):
                speed, got = curl_speed(target)
                if got != size:
                    raise RuntimeError(f"GET {target}: {got} bytes, expected {size}")
                results.append(speed / MB)
    d, n = median(ours), median(theirs)
    log(f"P1: dockyard {[round(x) for x in ours]} MB/s, nginx {[round(x) for x in theirs]} MB/s")
    run.rows.append(
        Row(
            f"P1 GET {human(size)} blob (warm cache, median of {len(ours)})",
            f"{d:,.0f} MB/s",
            f"nginx {n:,.0f} MB/s",
            ratio_text(d / n),
            "≥ 0.90x nginx",
            verdict(d / n >= 0.9),
        )
    )
    if run.args.checks and strace_available():
        trace = run.work / "strace-p1.txt"
        with profiling.strace(run.server.workers(), trace, "sendfile,write,writev,sendto,sendmsg"):
            curl_speed(url)
        calls = profiling.count_calls(trace)
        sf_calls, sf_bytes = calls.get("sendfile", (0, 0))
        other = sum(b for k, (_, b) in calls.items() if k != "sendfile")
        run.note(
            f"P1 sendfile check (strace -f on the workers, one GET of {human(size)}): "
            f"{sf_calls} sendfile calls moved {sf_bytes / MiB:,.0f} MiB; write/writev/sendto/sendmsg "
            f"moved {other / MiB:,.1f} MiB"
            + (" — blob GETs use sendfile" if sf_bytes >= size * 0.99 else " — blob GETs do NOT use sendfile")
        )


async def p2_manifest_rate(run: Run, http: aiohttp.ClientSession) -> None:
    await setup_p1_blob(run, http)
    await setup_manifest(run, http)
    nginx = setup_nginx(run)
    url = f"{run.base}/v2/bench/p2/manifests/latest"
    ours_body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    theirs_body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{nginx.base}/manifest").read())
    if ours_body != theirs_body:
        raise RuntimeError("nginx and dockyard serve different manifest bytes")
    s = run.sizes
    with _Profiled(run, "P2"):
        ours = wrk(url, connections=s.connections, duration=s.rate_seconds, threads=2, script=None)
    theirs = wrk(
        f"{nginx.base}/manifest", connections=s.connections, duration=s.rate_seconds, threads=2, script=None
    )
    for who, r in (("dockyard", ours), ("nginx", theirs)):
        if r.errors:
            run.note(f"P2 {who}: wrk reported {r.errors}")
    ratio = ours.requests_per_s / theirs.requests_per_s
    run.rows.append(
        Row(
            f"P2 GET manifest by tag ({len(ours_body)} B), {s.connections} conns, {s.rate_seconds:.0f} s",
            f"{ours.requests_per_s:,.0f} req/s (p99 {ours.latency_p99_ms:.1f} ms)",
            f"nginx {theirs.requests_per_s:,.0f} req/s (p99 {theirs.latency_p99_ms:.1f} ms)",
            ratio_text(ratio),
            "≥ 0.15x nginx",
            verdict(ratio >= 0.15 and not ours.errors),
        )
    )


async def p7_head_rate(run: Run, http: aiohttp.ClientSession) -> None:
    await setup_p1_blob(run, http)
    await setup_manifest(run, http)
    nginx = setup_nginx(run)
    s = run.sizes
    cases = [
        ("blob", f"{run.base}/v2/bench/p1/blobs/{run.p1_digest}", f"{nginx.base}/blob"),
        ("manifest", f"{run.base}/v2/bench/p2/manifests/latest", f"{nginx.base}/manifest"),
    ]
    for what, ours_url, nginx_url in cases:
        with _Profiled(run, f"P7-{what}"):
            ours = hey(ours_url, connections=s.connections, duration=s.rate_seconds, method="HEAD")
        theirs = hey(nginx_url, connections=s.connections, duration=s.rate_seconds, method="HEAD")
        for who, r in (("dockyard", ours), ("nginx", theirs)):
            if r.errors:
                run.note(f"P7 HEAD {what} {who}: hey reported {r.errors}")
        run.rows.append(
            Row(
                f"P7 HEAD {what}{' by tag' if what == 'manifest' else ''}, {s.connections} conns, "
                f"{s.rate_seconds:.0f} s",
                f"{ours.requests_per_s:,.0f} req/s (p99 {ours.latency_p99_ms:.1f} ms)",
                f"nginx {theirs.requests_per_s:,.0f} req/s",
                ratio_text(ours.requests_per_s / theirs.requests_per_s if theirs.requests_per_s else None),
                "report",
                "report" if not ours.errors else "ERRORS",
            )
        )


def reference_write(run: Run, files: list[Path]) -> tuple[list[float], list[int]]:
    """Run bench/reference_write.py over ``files``; its copies stay until the run ends."""
    dest = run.work / "reference-out"
    dest.mkdir(exist_ok=True)
    out = subprocess.run(
        [sys.executable, str(BENCH_DIR / "reference_write.py"), str(dest), *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    return result["seconds"], result["bytes"]


async def p3_push(run: Run, http: aiohttp.ClientSession, files: list[BlobFile]) -> None:
    assert run.sampler is not None
    ours: list[float] = []
    theirs: list[float] = []
    run.sampler.set_phase("P3 push")
    with _Profiled(run, "P3"):
        for blob in files:
            seconds = await pushclient.push_monolithic(http, run.base, "bench/p3", blob)
            ours.append(blob.size / seconds / MB)
            ref_seconds, _ = reference_write(run, [blob.path])
            theirs.append(blob.size / ref_seconds[0] / MB)
    run.sampler.set_phase("between")
    d, n = median(ours), median(theirs)
    log(f"P3: dockyard {[round(x) for x in ours]} MB/s, reference {[round(x) for x in theirs]} MB/s")
    run.rows.append(
        Row(
            f"P3 push {human(files[0].size)} monolithic POST+PUT (median of {len(files)})",
            f"{d:,.0f} MB/s",
            f"hash+write+fsync {n:,.0f} MB/s",
            ratio_text(d / n),
            "≥ 0.80x reference",
            verdict(d / n >= 0.8),
        )
    )
    if run.args.checks and strace_available() and run.server is not None:
        await durability_check(run, http)


async def durability_check(run: Run, http: aiohttp.ClientSession) -> None:
    """strace one push: the staged bytes are fsynced and renamed into blobs/ before the 201."""
    assert run.server is not None
    blob = Synthetic(run.fresh_seed(), 8 * MiB)
    _ = blob.digest
    trace = run.work / "strace-p3.txt"
    with profiling.strace(
        run.server.workers(), trace, "fsync,fdatasync,rename,renameat,renameat2,sendto,write"
    ):
        await pushclient.push_monolithic(http, run.base, "bench/p3", blob)
    lines = profiling.grep(trace, r"fsync|fdatasync|rename|HTTP/1\.1 201")
    hexa = blob.digest.split(":")[1]
    fsync_staged = next((i for i, x in enumerate(lines) if "sync(" in x and "/uploads/" in x), None)
    rename = next((i for i, x in enumerate(lines) if "rename" in x and hexa in x), None)
    created = next((i for i, x in enumerate(lines) if "HTTP/1.1 201" in x), None)
    ok = None not in (fsync_staged, rename, created) and fsync_staged < rename < created  # type: ignore[operator]
    run.note(
        "P3 durability check (strace one push): "
        + (
            "staged bytes fsynced, renamed into blobs/, then the 201 is sent"
            if ok
            else f"order not proven (fsync staged: {fsync_staged}, rename: {rename}, 201: {created})"
        )
    )


async def p5_chunked(run: Run, http: aiohttp.ClientSession) -> None:
    """Each way twice, in the order monolithic, chunked, chunked, monolithic (ABBA).

    How fast this VM takes new bytes into the page cache drifts by up to 2x within a minute
    (see "Reading the figures"); with one push each, whichever ran second took the drift.
    In ABBA order a steady drift weighs on both sums alike.
    """
    s = run.sizes
    times: dict[str, list[float]] = {"monolithic": [], "chunked": []}
    for i, way in enumerate(("monolithic", "chunked", "chunked", "monolithic")):
        blob = Synthetic(run.fresh_seed(), s.p5_blob)
        _ = blob.digest  # before the clock starts
        with _Profiled(run, f"P5-{way}-{i + 1}"):
            if way == "monolithic":
                t = await pushclient.push_monolithic(http, run.base, "bench/p5", blob)
            else:
                t = await pushclient.push_chunked(http, run.base, "bench/p5", blob, s.p5_chunk)
        times[way].append(t)
    t_mono, t_chunk = sum(times["monolithic"]), sum(times["chunked"])
    ratio = t_chunk / t_mono
    n = -(-s.p5_blob // s.p5_chunk)

    def each(way: str) -> str:
        pushes = times[way]
        rate = len(pushes) * s.p5_blob / sum(pushes) / MB
        return f"{way} {' + '.join(f'{t:.2f}' for t in pushes)} s ({rate:,.0f} MB/s)"

    run.rows.append(
        Row(
            f"P5 push {human(s.p5_blob)} in {n} x {human(s.p5_chunk)} PATCHes vs monolithic (ABBA)",
            each("chunked"),
            each("monolithic"),
            ratio_text(ratio),
            "≤ 1.30x monolithic",
            verdict(ratio <= 1.3),
        )
    )


async def p6_concurrent(run: Run, http: aiohttp.ClientSession, files: list[BlobFile]) -> None:
    assert run.sampler is not None
    run.sampler.set_phase("P6 push")

    async def one(i: int, blob: BlobFile) -> float:
        return await pushclient.push_monolithic(http, run.base, f"bench/p6-{i}", blob)

    with _Profiled(run, "P6"):
        t0 = time.perf_counter()
        latencies = await asyncio.gather(*(one(i, b) for i, b in enumerate(files)))
        wall = time.perf_counter() - t0
    run.sampler.set_phase("between")
    total = sum(b.size for b in files)
    ref_seconds, ref_bytes = reference_write(run, [b.path for b in files])
    ref_rate = sum(ref_bytes) / sum(ref_seconds) / MB
    ours = total / wall / MB
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]  # nearest rank: with 16 pushes, the slowest
    rss = run.sampler.worker_peak_mib("P6 push")
    if rss > 100:
        run.note(
            f"P6: a worker's RSS peaked at {rss:.0f} MiB with {len(files)} pushes in flight "
            f"(private {run.sampler.worker_peak_mib('P6 push', private=True):.0f} MiB): "
            "over P4's 100 MiB bound — memory grows with concurrent uploads"
        )
    run.rows.append(
        Row(
            f"P6 {len(files)} concurrent pushes x {human(files[0].size)}",
            f"{ours:,.0f} MB/s aggregate; latency p50 {statistics.median(lat):.2f} s, p99 {p99:.2f} s; "
            f"peak RSS/worker {rss:.0f} MiB",
            f"reference {ref_rate:,.0f} MB/s ({len(files)} files, one process)",
            ratio_text(ours / ref_rate),
            "report",
            "report",
        )
    )


async def p4_rss(run: Run, http: aiohttp.ClientSession) -> None:
    assert run.sampler is not None and run.server is not None
    s = run.sizes
    blob = Synthetic(run.fresh_seed(), s.p4_blob)
    log(f"P4: hashing the {human(s.p4_blob)} stream first")
    _ = blob.digest
    run.sampler.set_phase("P4 idle")
    await asyncio.sleep(0.5)
    run.sampler.set_phase("P4 push")
    with _Profiled(run, "P4-push"):
        t_push = await pushclient.push_monolithic(http, run.base, "bench/p4", blob)
    run.sampler.set_phase("P4 pull")
    with _Profiled(run, "P4-pull"):
        t_pull, got = curl_time(f"{run.base}/v2/bench/p4/blobs/{blob.digest}")
    run.sampler.set_phase("between")
    if got != s.p4_blob:
        raise RuntimeError(f"P4 pull got {got} bytes, expected {s.p4_blob}")
    smp = run.sampler
    idle = smp.worker_peak_mib("P4 idle")
    push, pull = smp.worker_peak_mib("P4 push"), smp.worker_peak_mib("P4 pull")
    uss = max(smp.worker_peak_mib("P4 push", private=True), smp.worker_peak_mib("P4 pull", private=True))
    uss_idle = smp.worker_peak_mib("P4 idle", private=True)
    small = smp.worker_peak_mib("P3 push") if "P3 push" in smp.peaks else None
    peak = max(push, pull)
    flat = small is None or peak <= small + 16
    run.rows.append(
        Row(
            f"P4 peak RSS per worker, {human(s.p4_blob)} pushed then pulled",
            f"push {push:.0f} MiB, pull {pull:.0f} MiB (idle {idle:.0f} MiB"
            + (f"; {human(s.p3_blob)} push {small:.0f} MiB" if small is not None else "")
            + f"; private {uss_idle:.0f} → {uss:.0f} MiB)",
            f"push {s.p4_blob / t_push / MB:,.0f} MB/s, pull {s.p4_blob / t_pull / MB:,.0f} MB/s",
            "—",
            "≤ 100 MiB/worker, flat",
            verdict(peak <= 100 and flat),
        )
    )
    run.note(f"P4 parent (supervisor) peak RSS {smp.parent_peak_mib('P4 push'):.0f} MiB")


# -- the run ------------------------------------------------------------------------------------------


def environment() -> list[str]:
    def cmd(*args: str) -> str:
        try:
            return subprocess.run(
                args, capture_output=True, text=True, cwd=REPO_DIR, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    with open("/proc/meminfo") as f:
        mem = next((line.split(":")[1].strip() for line in f if line.startswith("MemTotal")), "?")
    commit = cmd("git", "rev-parse", "--short", "HEAD")
    dirty = cmd("git", "status", "--porcelain", "--", "src")
    nginx_version = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True
    ).stderr.strip()
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- uname -a: `{cmd('uname', '-a')}`",
        f"- nproc: {os.cpu_count()}; memory: {mem}",
        f"- python: {platform.python_version()} ({sys.executable})",
        f"- dockyard commit: {commit}{' + uncommitted changes in src/' if dirty else ''}",
        f"- references: {nginx_version.removeprefix('nginx version: ')}; "
        f"{' '.join((cmd('wrk', '-v') or 'wrk ?').split()[:2])}; "
        f"hey; {' '.join((cmd('curl', '--version') or 'curl ?').split()[:2])}",
    ]


def render(run: Run, elapsed: float, mode: str) -> tuple[str, str]:
    headers = ["workload", "dockyard", "reference", "ratio", "target", "result", "other CPU"]
    rows = [[r.workload, r.dockyard, r.reference, r.ratio, r.target, r.verdict, r.noise] for r in run.rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    text = [line, "  ".join("-" * w for w in widths)]
    text += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    md = [f"# dockyard benchmark ({mode})", "", *environment(), f"- whole run: {elapsed:.0f} s"]
    if run.page_cache_mbps is not None:
        md.append(f"- writing new bytes into the page cache (no fsync): {run.page_cache_mbps:,.0f} MB/s")
    md.append("")
    if run.args.profile:
        md += ["**Profiled run (py-spy attached to the workers): figures are perturbed.**", ""]
    md += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    if run.notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in run.notes]
    if run.sampler is not None:
        md += ["", "Peak RSS by phase, MiB (private/USS in brackets): supervisor; each worker", ""]
        workers = run.worker_pids
        for phase, peaks in run.sampler.peaks.items():
            if phase == "between" or run.server is None:
                continue
            private = run.sampler.private_peaks.get(phase, {})

            def fmt(pid: int, peaks: dict[int, int] = peaks, private: dict[int, int] = private) -> str:
                return f"{peaks.get(pid, 0) / 1024:.0f} ({private.get(pid, 0) / 1024:.0f})"

            md.append(f"- {phase}: {fmt(run.server.pid)}; " + ", ".join(fmt(w) for w in workers))
    return "\n".join(text), "\n".join(md) + "\n"


async def run_all(run: Run) -> None:
    s = run.sizes
    wanted = set(run.args.only)
    files_dir = run.work / "sources"
    files_dir.mkdir()
    p3_files: list[BlobFile] = []
    p6_files: list[BlobFile] = []
    if "P3" in wanted:
        p3_files = [
            BlobFile.write(files_dir / f"p3-{i}", run.fresh_seed(), s.p3_blob) for i in range(s.repeats)
        ]
    if "P6" in wanted:
        p6_files = [
            BlobFile.write(files_dir / f"p6-{i}", run.fresh_seed(), s.p6_blob) for i in range(s.p6_clients)
        ]
    if p3_files or p6_files:
        written = len(p3_files) + len(p6_files)
        log(f"setup: wrote {written} source files; syncing so writeback does not interfere")
        os.sync()
    if wanted & {"P3", "P4", "P5", "P6"}:
        run.page_cache_mbps = page_cache_probe(run.work / "probe")
        log(f"setup: writing new bytes into the page cache runs at {run.page_cache_mbps:,.0f} MB/s here")

    run.server = Dockyard(run.work / "data", run.work / "dockyard.log")
    run.server.start()
    run.worker_pids = run.server.workers()
    log(f"dockyard: pid {run.server.pid}, workers {run.worker_pids}, {run.base}")
    run.sampler = RssSampler(run.server)
    run.sampler.start()
    await asyncio.sleep(0.5)
    run.sampler.set_phase("setup")

    async with pushclient.new_session() as http:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("P1", lambda: p1_get_blob(run, http)),
            ("P2", lambda: p2_manifest_rate(run, http)),
            ("P7", lambda: p7_head_rate(run, http)),
            ("P3", lambda: p3_push(run, http, p3_files)),
            ("P5", lambda: p5_chunked(run, http)),
            ("P6", lambda: p6_concurrent(run, http, p6_files)),
            ("P4", lambda: p4_rss(run, http)),
        ]
        meter = CpuMeter()
        for name, step in steps:
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            log(f"{name} ...")
            if run.args.wait_quiet:
                await wait_quiet(meter, run.args.wait_quiet)
            first_row = len(run.rows)
            before = meter.snapshot()
            await step()
            foreign, steal = meter.foreign_share(before, meter.snapshot())
            noise = f"{100 * foreign:.0f}%" + (f" (+{100 * steal:.0f}% steal)" if steal >= 0.01 else "")
            for row in run.rows[first_row:]:
                row.noise = noise
            if foreign >= 0.10:
                run.note(
                    f"{name}: other processes used {noise} of the CPUs meanwhile — its figures are noisy"
                )
            last = run.rows[-1].dockyard if run.rows else ""
            log(f"{name} done in {time.perf_counter() - t0:.1f} s: {last}")


async def wait_quiet(meter: CpuMeter, limit: float, threshold: float = 0.10) -> None:
    """Wait (at most ``limit`` s) for 2 s in which other processes use < 10% of the CPUs."""
    t0 = time.monotonic()
    while True:
        before = meter.snapshot()
        await asyncio.sleep(2)
        foreign, _ = meter.foreign_share(before, meter.snapshot())
        waited = time.monotonic() - t0
        if foreign < threshold:
            if waited > 2.5:
                log(f"  quiet after {waited:.0f} s")
            return
        if waited > limit:
            log(f"  the machine stayed busy for {waited:.0f} s ({100 * foreign:.0f}% other CPU); going ahead")
            return
        if waited < 2.5:
            log(f"  waiting up to {limit:.0f} s for a quiet machine ({100 * foreign:.0f}% other CPU)")


def page_cache_probe(path: Path, size: int = 256 * MiB) -> float:
    """MB/s of writing ``size`` new bytes into the page cache (no fsync): what every push pays.

    On a VM with free page reporting (virtio-balloon) fresh pages cost a hypervisor fault each:
    this figure explains push throughputs far below the disk's and the CPU's speed.
    """
    block = Synthetic(1, 4 * MiB)
    data = b"".join(block.chunks())
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(size // len(data)):
            f.write(data)
    return size / (time.perf_counter() - t0) / MB


def needed_bytes(s: Sizes, wanted: set[str]) -> int:
    total = GiB  # margin, SQLite, the P1 blob
    if "P1" in wanted or "P7" in wanted:
        total += s.p1_blob
    if "P3" in wanted:
        total += 2 * s.p3_blob * s.repeats + s.p3_blob
    if "P4" in wanted:
        total += s.p4_blob
    if "P5" in wanted:
        total += 4 * s.p5_blob
    if "P6" in wanted:
        total += 3 * s.p6_blob * s.p6_clients
    return total


def update_readme(md: str) -> None:
    """Put a complete full run's table into bench/README.md, between its two markers."""
    readme = BENCH_DIR / "README.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        return
    body = md.split("\n", 2)[2].strip()  # without the "# dockyard benchmark" title
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and 3 s rate runs (~1 minute)")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help="comma-separated workloads to run (default: all)"
    )
    parser.add_argument("--workdir", type=Path, help="where the temp dir goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs, profiles)")
    parser.add_argument("--out", type=Path, help="markdown results file (default: bench/results-latest.md)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy record the workers during each workload"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each workload, wait up to S seconds for other processes to go quiet",
    )
    parser.add_argument("--no-checks", dest="checks", action="store_false", help="skip the strace checks")
    args = parser.parse_args()
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = set(args.only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")

    missing = check_tools()
    if missing:
        print(
            f"missing tools; install them with:\n  sudo apt-get install -y {' '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    if args.profile and profiling.pyspy() is None:
        print("--profile needs py-spy:  pip install py-spy   (into this venv)", file=sys.stderr)
        return 2
    if args.checks and not strace_available():
        print("note: strace not found (apt-get install -y strace): skipping the sendfile/fsync checks")

    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    out = args.out or BENCH_DIR / ("results-quick.md" if args.quick else "results-latest.md")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dockyard-bench-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    need = needed_bytes(sizes, set(args.only))
    if free < need:
        print(f"{work}: {free / GiB:.1f} GiB free, this run needs {need / GiB:.1f} GiB", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # stop dockyard and nginx, remove the temp dir
    run = Run(args, sizes, work)
    try:
        return run_and_report(run, mode, out)
    finally:
        if run.args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_and_report(run: Run, mode: str, out: Path) -> int:
    args = run.args
    log(f"dockyard benchmark ({mode}); temp dir {run.work}")
    t0 = time.perf_counter()
    failed: BaseException | None = None
    try:
        asyncio.run(run_all(run))
    except BaseException as exc:  # report what ran, then re-raise below
        failed = exc
    finally:
        if run.sampler is not None:
            run.sampler.stop()
        if run.nginx is not None:
            run.nginx.stop()
        if run.server is not None:
            run.server.stop()
    elapsed = time.perf_counter() - t0
    table, md = render(run, elapsed, mode)
    if run.rows and failed is None:
        out.write_text(md)
        complete = set(args.only) == set(WORKLOADS) and not args.profile and args.out is None
        if mode == "full" and complete:
            update_readme(md)
    if args.profile and run.profiles:
        out.with_name(out.stem + "-profiles.txt").write_text("\n\n".join(run.profiles) + "\n")
    log("")
    log(table)
    for n in run.notes:
        log(f"  * {n}")
    log(f"\nwhole run: {elapsed:.0f} s")
    if run.rows and failed is None:
        log(f"wrote {out}")
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            return 130
        raise failed
    return 0 if all(r.verdict != "FAIL" for r in run.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
