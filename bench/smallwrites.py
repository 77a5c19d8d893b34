"""Small writes beside CNCF Distribution: P8 small-image push and P9 tag deletes.

Each round starts a registry on a fresh data dir: ``dockyard serve --workers 2`` (filesystem +
SQLite) and, with ``--distribution PATH``, Distribution on a directory; rounds are interleaved
(dockyard, Distribution, dockyard, ...) so a noisy neighbour hits both alike, and each ratio is
the median of the per-round ratios.

- P8: ``--clients`` clients push ``--images`` small images (a tiny config blob, a 200-byte layer,
  the manifest by tag). dockyard takes each blob in one ``POST ?digest=``; Distribution has no
  single POST, so there a blob is ``POST`` + ``PUT ?digest=`` (5 requests an image against 3).
- P9: delete half the tags by tag (``DELETE /v2/<name>/manifests/<tag>``), same concurrency.
- Latency: the median of ``--samples`` sequential blob pushes of 200 bytes (one single POST;
  Distribution: POST + PUT) and of as many manifest PUTs.
- P2 beside Distribution: then, on the same registry, ``wrk -t2 -c<clients>`` GETs one of the
  pushed manifests by tag for ``--read-seconds`` (plain HTTP; the median of per-round ratios and
  the worst round are the targets).

    .venv/bin/python bench/smallwrites.py [--rounds 2] [--images 2000] [--distribution PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
import profiling
from distribution import Node, add_distribution_option, filesystem_storage, start_distribution, stop
from procs import children, free_port, wait_http, wrk

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TARGETS = {"P8": 1.5, "P9": 1.0, "P2": 1.5}
P2_WORST_ROUND = 1.0
REPOSITORIES = 16


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start_dockyard(data_dir: Path, workers: int) -> Node:
    """``dockyard serve --workers N`` on a free port, default settings otherwise."""
    port = free_port()
    exe = Path(sys.executable).with_name("dockyard")
    cmd = [str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    cmd += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    log = data_dir.parent / f"{data_dir.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/", timeout=180, proc=proc)  # a loaded machine starts slowly
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return Node("dockyard", url, proc, log)


class Pusher:
    """How one registry takes a blob: a single POST, or POST + PUT."""

    def __init__(self, session: aiohttp.ClientSession, base: str, single_post: bool) -> None:
        self.session = session
        self.base = base
        self.single_post = single_post

    async def blob(self, repo: str, data: bytes) -> None:
        url = f"{self.base}/v2/{repo}/blobs/uploads/"
        if self.single_post:
            async with self.session.post(url, params={"digest": digest(data)}, data=data) as r:
                assert r.status == 201, (r.status, await r.text())
            return
        async with self.session.post(url) as r:
            assert r.status == 202, (r.status, await r.text())
            location = r.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        async with self.session.put(
            f"{location}{sep}digest={digest(data)}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ) as r:
            assert r.status == 201, (r.status, await r.text())

    async def manifest(self, repo: str, tag: str, body: bytes) -> None:
        async with self.session.put(
            f"{self.base}/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
        ) as r:
            assert r.status == 201, (r.status, await r.text())

    async def delete_tag(self, repo: str, tag: str) -> None:
        async with self.session.delete(f"{self.base}/v2/{repo}/manifests/{tag}") as r:
            assert r.status == 202, (r.status, await r.text())


def image(seed: str) -> tuple[bytes, bytes, bytes]:
    """A tiny config, a 200-byte layer and the manifest naming both."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = (f"layer {seed} ".encode() * 200)[:200]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": 200}
            ],
        }
    ).encode()
    return config, layer, manifest


async def in_parallel(jobs: list[Callable[[], Awaitable[None]]], clients: int) -> float:
    """Run ``jobs`` with ``clients`` at a time; the wall time in seconds."""
    queue = list(reversed(jobs))

    async def client() -> None:
        while queue:
            await queue.pop()()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - began


@dataclass
class RoundResult:
    push_rate: float  # manifests/s
    delete_rate: float  # deletes/s
    blob_ms: float  # median sequential blob push
    manifest_ms: float  # median sequential manifest PUT
    read_rate: float = 0.0  # manifest GETs by tag per second (wrk)


def no_profile(label: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


async def one_round(
    base: str,
    single_post: bool,
    images: int,
    clients: int,
    samples: int,
    profile: Callable[[str], contextlib.AbstractContextManager[None]] = no_profile,
) -> RoundResult:
    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        push = Pusher(session, base, single_post)
        built = [(f"bench/r{i % REPOSITORIES}", f"t{i}", image(f"{base}-{i}")) for i in range(images)]

        def push_job(repo: str, tag: str, parts: tuple[bytes, bytes, bytes]) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                config, layer, manifest = parts
                await push.blob(repo, config)
                await push.blob(repo, layer)
                await push.manifest(repo, tag, manifest)

            return job

        with profile("push"):
            pushed = await in_parallel([push_job(*b) for b in built], clients)

        def delete_job(repo: str, tag: str) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                await push.delete_tag(repo, tag)

            return job

        with profile("delete"):
            deleted = await in_parallel([delete_job(r, t) for r, t, _ in built[::2]], clients)

        blob_times: list[float] = []
        manifest_times: list[float] = []
        for i in range(samples):
            config, layer, manifest = image(f"{base}-seq-{i}")
            repo = "bench/sequential"
            began = time.perf_counter()
            await push.blob(repo, layer)
            blob_times.append(time.perf_counter() - began)
            await push.blob(repo, config)
            began = time.perf_counter()
            await push.manifest(repo, f"s{i}", manifest)
            manifest_times.append(time.perf_counter() - began)
    return RoundResult(
        push_rate=images / pushed,
        delete_rate=len(built[::2]) / deleted,
        blob_ms=statistics.median(blob_times) * 1000,
        manifest_ms=statistics.median(manifest_times) * 1000,
    )


@dataclass
class Figures:
    rounds: list[RoundResult] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in self.rounds))


def run_round(kind: str, work: Path, n: int, args: argparse.Namespace) -> RoundResult:
    data = work / f"{kind}-{n}"
    data.mkdir()
    if kind == "dockyard":
        node = start_dockyard(data, args.workers)
    else:
        node = start_distribution(args.distribution, work, filesystem_storage(data), name=f"distribution-{n}")
    profile: Callable[[str], contextlib.AbstractContextManager[None]] = no_profile
    if args.profile and kind == "dockyard" and n == 0:
        profile = profiler(node, work)
    try:
        result = asyncio.run(
            one_round(node.url, kind == "dockyard", args.images, args.clients, args.samples, profile)
        )
        # A tag P9 left in place (it deleted the even ones): the pull hot path, by tag.
        read = wrk(
            f"{node.url}/v2/bench/r1/manifests/t1",
            connections=args.clients,
            duration=args.read_seconds,
            threads=2,
            script=None,
            headers={"Accept": OCI_MANIFEST},
        )
        if read.errors:
            raise RuntimeError(f"{kind}: wrk reported {read.errors}")
        result.read_rate = read.requests_per_s
    finally:
        if kind == "dockyard":
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                node.proc.wait(timeout=30)
        else:
            stop(node)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    print(
        f"round {n + 1} {kind:12}: push {result.push_rate:7.1f} manifests/s, delete {result.delete_rate:7.1f}"
        f" tags/s, blob {result.blob_ms:5.2f} ms, manifest PUT {result.manifest_ms:5.2f} ms,"
        f" manifest GET {result.read_rate:,.0f}/s",
        flush=True,
    )
    return result


def profiler(node: Node, work: Path) -> Callable[[str], contextlib.AbstractContextManager[None]]:
    """py-spy on every worker while a phase runs, then strace -c -f of one worker for as long:
    where the event loop spends its time, and the syscalls per request."""

    @contextlib.contextmanager
    def phase(label: str) -> Iterator[None]:
        workers = children(node.proc.pid)
        trace = work / f"strace-{label}.txt"
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(workers[0]), "-o", str(trace)], stderr=subprocess.DEVNULL
        )
        began = time.perf_counter()
        with profiling.record(workers, work / "profiles", label) as paths:
            yield
        seconds = time.perf_counter() - began
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        print(f"{label} ({seconds:.1f} s, py-spy and strace attached)\n" + profiling.report(paths, seconds))
        print(f"strace -c -f of worker {workers[0]} during {label}:")
        print(trace.read_text() if trace.exists() else "(no strace)")

    return phase


def report(args: argparse.Namespace, ours: Figures, theirs: Figures) -> tuple[str, bool]:
    pairs = list(zip(ours.rounds, theirs.rounds, strict=False))
    lines = [
        "# Small writes: dockyard beside CNCF Distribution",
        "",
        f"`python bench/smallwrites.py --rounds {args.rounds} --images {args.images} --clients {args.clients}"
        f"{' --distribution ...' if args.distribution else ''}` on {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. dockyard: `serve --workers {args.workers}`, "
        "filesystem + SQLite; Distribution v3: filesystem. Each image: a tiny config blob, a 200-byte layer, "
        "the manifest by tag. dockyard takes a blob in one `POST ?digest=`; Distribution has no single "
        "POST, so there a blob is `POST` + `PUT` (5 requests an image against 3). Every `201` follows an "
        "fsync of the bytes and (dockyard) of the metadata.",
        "",
        "| | dockyard (median) | Distribution (median) | ratio (median of rounds) | per round | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = False
    for key, name, unit in (
        ("P8", "push_rate", "manifests/s"),
        ("P9", "delete_rate", "tag deletes/s"),
        ("P2", "read_rate", f"manifest GETs by tag/s (plain HTTP, wrk -t2 -c{args.clients})"),
    ):
        mine = ours.median(name)
        target = f">= {TARGETS[key]}x" + (f", worst round >= {P2_WORST_ROUND}x" if key == "P2" else "")
        if pairs:
            ratios = [getattr(a, name) / getattr(b, name) for a, b in pairs]
            ratio = statistics.median(ratios)
            passed = ratio >= TARGETS[key] and (key != "P2" or min(ratios) >= P2_WORST_ROUND)
            failed |= not passed
            per_round = ", ".join(f"{r:.2f}" for r in ratios)
            verdict = "PASS" if passed else "FAIL"
            lines.append(
                f"| {key} {unit} | {mine:.0f} | {theirs.median(name):.0f} | {ratio:.2f}x | "
                f"{per_round} | {target} | {verdict} |"
            )
        else:
            lines.append(f"| {key} {unit} | {mine:.0f} | (no --distribution) | | | {target} | |")
    for name, label in (
        ("blob_ms", "one 200-byte blob push, sequential (ms)"),
        ("manifest_ms", "one manifest PUT, sequential (ms)"),
    ):
        other = f"{theirs.median(name):.2f}" if theirs.rounds else ""
        lines.append(f"| {label} | {ours.median(name):.2f} | {other} | | | report | |")
    lines += [
        "",
        "| round | registry | manifests/s | tag deletes/s | blob push (ms) | manifest PUT (ms) "
        "| manifest GET/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, mine_round in enumerate(ours.rounds):
        done = [("dockyard", mine_round)]
        if n < len(theirs.rounds):
            done.append(("Distribution", theirs.rounds[n]))
        for kind, figures in done:
            lines.append(
                f"| {n + 1} | {kind} | {figures.push_rate:.1f} | {figures.delete_rate:.1f} | "
                f"{figures.blob_ms:.2f} | {figures.manifest_ms:.2f} | {figures.read_rate:,.0f} |"
            )
    lines.append("")
    return "\n".join(lines), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per registry (interleaved)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--samples", type=int, default=100, help="sequential pushes for the latencies")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--read-seconds", type=float, default=10.0, help="P2: wrk's duration per round")
    parser.add_argument("--profile", action="store_true", help="py-spy and strace -c dockyard in round 1")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results-smallwrites.md")
    add_distribution_option(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dockyard-smallwrites-", dir=args.workdir))
    ours, theirs = Figures(), Figures()
    try:
        for n in range(args.rounds):
            ours.rounds.append(run_round("dockyard", work, n, args))
            if args.distribution:
                theirs.rounds.append(run_round("distribution", work, n, args))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text, failed = report(args, ours, theirs)
    args.out.write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
