"""Scale-out reads: a 3-node PostgreSQL + SeaweedFS cluster beside a SQLite node (and Distribution).

    python bench/cluster.py [--rounds 3] [--seconds 5] [--distribution PATH] [--out FILE]

Starts its own PostgreSQL, SeaweedFS, three ``dockyard serve`` nodes over them (one worker each,
default settings: ``cache_ttl_seconds`` 5), a fourth with the cache off (``cache_ttl_seconds: 0``,
for the record), a SQLite + filesystem node (one worker), and with ``--distribution`` CNCF
Distribution over the same bucket (another prefix, its in-memory blob descriptor cache on).
Everything on 127.0.0.1; everything it started is stopped and removed at the end.

Workloads, each target in turn within a round, rounds interleaved, medians reported:
- manifest GET by tag and by digest (``wrk -t2 -c16``), HEAD by digest (``hey -c16``, as wrk
  4.1 never finishes a HEAD), on the PostgreSQL node of the round (1, 2, 3 in turn);
- tag-move visibility under load: ``wrk`` GETs the tag on nodes 2 and 3 meanwhile; node 1 moves
  the tag (``PUT``), and nodes 2 and 3 are polled until both answer the new digest: time from the
  ``201`` to the last node's first new answer (p50, p99, max).

Targets (issue "Scale-out reads"): a PostgreSQL node ≥ 0.7x the SQLite node's rate and ≥ 3x
Distribution; every node sees a moved tag within 1 s (p99) under load and never past the TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from distribution import Node, add_distribution_option, start_distribution, stop  # noqa: E402
from procs import CpuMeter, free_port, hey, wait_http, wrk  # noqa: E402
from tests.support.services import PostgresServer, SeaweedFS, SharedBackends  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO = "bench/p2"
TTL = 5.0
Image = tuple[
    bytes, str, bytes
]  # manifest bytes, digest, config bytes  # the default cache_ttl_seconds the nodes run with


@dataclass
class Results:
    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (op, target) -> req/s
    errors: list[str] = field(default_factory=list)
    visibility: list[float] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)


def start_dockyard(name: str, work: Path, env: dict[str, str]) -> Node:
    port = free_port()
    data = work / name
    data.mkdir()
    log = work / f"{name}.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    exe = Path(sys.executable).with_name("dockyard")
    cmd = [str(exe), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**base, **env}, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/", proc=proc)
    return Node(name, url, proc, log)


def start_s3_distribution(binary: Path, work: Path, s3: SeaweedFS) -> Node:
    """Distribution over the same bucket as the nodes (another prefix), its in-memory blob
    descriptor cache on."""
    storage = {
        "s3": {
            "accesskey": s3.access_key,
            "secretkey": s3.secret_key,
            "region": s3.region,
            "regionendpoint": s3.endpoint,
            "forcepathstyle": True,
            "bucket": s3.bucket,
            "rootdirectory": "/distribution",
            "secure": False,
        },
        "cache": {"blobdescriptor": "inmemory"},
        "delete": {"enabled": True},
    }
    return start_distribution(binary, work, storage)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = b"bench layer " * 100


def manifests(count: int) -> list[Image]:
    """``count`` small image manifests (manifest, digest, config), all with one layer, LAYER."""
    layer = LAYER
    found = []
    for i in range(count):
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest_of(layer),
                        "size": len(layer),
                    }
                ],
            },
            indent=3,
        ).encode()
        found.append((body, digest_of(body), config))
    return found


def push(url: str, images: list[Image], tag_first: str = "latest") -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for data in [LAYER] + [config for _, _, config in images]:
            r = c.head(f"/v2/{REPO}/blobs/{digest_of(data)}")
            if r.status_code == 200:
                continue
            r = c.post(f"/v2/{REPO}/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["location"]  # kept byte for byte: Distribution signs its query
            sep = "&" if "?" in location else "?"
            r = c.put(f"{location}{sep}digest={digest_of(data)}", content=data)
            assert r.status_code == 201, r.text
        for i, (body, digest, _) in enumerate(images):
            ref = tag_first if i == 0 else digest
            r = c.put(f"/v2/{REPO}/manifests/{ref}", content=body, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201, r.text


def rate(op: str, url: str, seconds: float, script: Path) -> tuple[float, str | None]:
    """Requests/s; every request accepts OCI manifests (Distribution answers 404 otherwise)."""
    if op == "HEAD by digest":
        r = hey(url, connections=16, duration=seconds, method="HEAD", headers={"Accept": OCI_MANIFEST})
    else:
        r = wrk(url, connections=16, duration=seconds, threads=2, script=script)
    return r.requests_per_s, r.errors


def measure_rates(
    targets: dict[str, str], digest: str, rounds: int, seconds: float, work: Path, res: Results
) -> None:
    script = work / "accept.lua"
    script.write_text(f'wrk.headers["Accept"] = "{OCI_MANIFEST}"\n')
    ops = {"GET by tag": "latest", "GET by digest": digest, "HEAD by digest": digest}
    meter = CpuMeter()
    for i in range(rounds):
        pg_name = f"postgres node {i % 3 + 1}"
        order = [pg_name, *[t for t in targets if not t.startswith("postgres node ")]]
        if i % 2:
            order.reverse()  # ABBA: drift on the machine falls on both sides
        for op, ref in ops.items():
            for target in order:
                start = meter.snapshot()
                rps, errors = rate(op, f"{targets[target]}/v2/{REPO}/manifests/{ref}", seconds, script)
                res.other_cpu.append(meter.foreign_share(start, meter.snapshot())[0])
                key = "postgres node" if target == pg_name else target
                res.rates.setdefault((op, key), []).append(rps)
                if errors:
                    res.errors.append(f"{op} on {target}: {errors}")
                print(f"round {i + 1} {op:15} {target:22} {rps:9,.0f} req/s", flush=True)


def measure_visibility(nodes: list[str], images: list[Image], moves: int, res: Results) -> None:
    """Move the tag on node 1; time until nodes 2 and 3 both answer the new digest."""
    # wrk runs for as long as the moves take; it is stopped when they are done
    wrk_procs: list[subprocess.Popen[bytes]] = []
    for url in nodes[1:]:
        wrk_procs.append(
            subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    "-c8",
                    "-d600s",
                    "-H",
                    f"Accept: {OCI_MANIFEST}",
                    f"{url}/v2/{REPO}/manifests/latest",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        time.sleep(1.0)
        asyncio.run(_visibility(nodes, images, moves, res))
    finally:
        for p in wrk_procs:
            p.terminate()
            p.wait(timeout=10)


async def _visibility(nodes: list[str], images: list[Image], moves: int, res: Results) -> None:
    async with (
        httpx.AsyncClient(base_url=nodes[0], timeout=30) as writer,
        httpx.AsyncClient(base_url=nodes[1], timeout=30) as n2,
        httpx.AsyncClient(base_url=nodes[2], timeout=30) as n3,
    ):

        async def until(client: httpx.AsyncClient, digest: str, since: float) -> float:
            while True:
                r = await client.head(f"/v2/{REPO}/manifests/latest", headers={"Accept": OCI_MANIFEST})
                if r.headers.get("docker-content-digest") == digest:
                    return time.monotonic() - since
                if time.monotonic() - since > 3 * TTL:
                    return float("inf")

        for i in range(moves):
            body, digest, _ = images[(i + 1) % 2]
            r = await writer.put(
                f"/v2/{REPO}/manifests/latest", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert r.status_code == 201, r.text
            acked = time.monotonic()
            seen = await asyncio.gather(until(n2, digest, acked), until(n3, digest, acked))
            res.visibility.append(max(seen))
            await asyncio.sleep(0.2)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(res: Results, args: argparse.Namespace, has_distribution: bool) -> tuple[str, bool]:
    rows = []
    ok_all = True

    def med(op: str, target: str) -> float | None:
        found = res.rates.get((op, target))
        return statistics.median(found) if found else None

    def ratio(op: str, ours: str, theirs: str) -> float:
        """The median of the rounds' ratios: each round measured both within seconds."""
        pairs = zip(res.rates[(op, ours)], res.rates[(op, theirs)], strict=True)
        return statistics.median(a / b for a, b in pairs)

    for op in ("GET by tag", "GET by digest", "HEAD by digest"):
        pg, lite = med(op, "postgres node"), med(op, "sqlite node")
        off, dist = med(op, "postgres node, cache off"), med(op, "distribution")
        assert pg is not None and lite is not None
        r = ratio(op, "postgres node", "sqlite node")
        ok_all &= r >= 0.7
        rows.append(
            f"| manifest {op} | {pg:,.0f} req/s | SQLite node {lite:,.0f} req/s | {r:.2f}x "
            f"| ≥ 0.7x | {verdict(r >= 0.7)} |"
        )
        if dist is not None:
            r = ratio(op, "postgres node", "distribution")
            ok_all &= r >= 3
            rows.append(
                f"| manifest {op} | {pg:,.0f} req/s | Distribution {dist:,.0f} req/s | {r:.2f}x "
                f"| ≥ 3x | {verdict(r >= 3)} |"
            )
        if off is not None:
            r = ratio(op, "postgres node, cache off", "sqlite node")
            rows.append(
                f"| manifest {op}, cache off (`cache_ttl_seconds: 0`) | {off:,.0f} req/s | "
                f"SQLite node {lite:,.0f} req/s | {r:.2f}x | report | |"
            )
    vis = res.visibility
    p50, p99, worst = percentile(vis, 0.5), percentile(vis, 0.99), max(vis)
    ok = p99 <= 1.0 and worst <= TTL
    ok_all &= ok
    rows.append(
        f"| tag move on node 1 seen by nodes 2 and 3, under load ({len(vis)} moves) "
        f"| p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {worst * 1e3:.1f} ms | — | — "
        f"| p99 ≤ 1 s, max ≤ TTL ({TTL:.0f} s) | {verdict(ok)} |"
    )
    load = os.getloadavg()
    lines = [
        "# Scale-out reads (bench/cluster.py)",
        "",
        f"`python bench/cluster.py --rounds {args.rounds} --seconds {args.seconds:g}"
        + (" --distribution PATH`" if has_distribution else "`")
        + f", {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores.",
        "Each node one worker; PostgreSQL nodes over SeaweedFS; rates are medians of the rounds, ratios the "
        "medians of each round's ratio (a round measures every target in turn, ABBA order; its PostgreSQL "
        "node is node 1, 2, 3 in turn).",
        "",
        "| workload | dockyard over PostgreSQL | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Machine: load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) "
        f"on {os.cpu_count()} cores; processes outside this run used "
        f"{statistics.median(res.other_cpu) * 100:.0f}% of the cores "
        f"(median over the rate runs, max {max(res.other_cpu) * 100:.0f}%). Absolute rates move with that; "
        "the ratios compare targets measured side by side.",
    ]
    if res.errors:
        lines += ["", "Errors reported by the load generators:", *[f"- {e}" for e in res.errors]]
    return "\n".join(lines) + "\n", ok_all


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="each rate run")
    parser.add_argument("--moves", type=int, default=100, help="tag moves in the visibility run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-cluster.md")
    add_distribution_option(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dockyard-cluster-bench-"))
    started: list[Node] = []
    pg = PostgresServer()
    s3 = SeaweedFS(work / "seaweedfs")
    try:
        pg.start()
        s3.start()
        backends = SharedBackends(s3, pg)
        env = backends.server_env(redirect=True)
        nodes = [start_dockyard(f"pg{i}", work, env) for i in (1, 2, 3)]
        started += nodes
        off = start_dockyard("pg-nocache", work, {**env, "DOCKYARD_CACHE_TTL_SECONDS": "0"})
        lite = start_dockyard("sqlite", work, {})
        started += [off, lite]
        images = manifests(2)
        for url in (nodes[0].url, lite.url):
            push(url, images)
        targets = {f"postgres node {i + 1}": n.url for i, n in enumerate(nodes)}
        targets |= {"postgres node, cache off": off.url, "sqlite node": lite.url}
        if args.distribution:
            dist = start_s3_distribution(args.distribution, work, s3)
            started.append(dist)
            push(dist.url, images)
            targets["distribution"] = dist.url
        res = Results()
        measure_rates(targets, images[0][1], args.rounds, args.seconds, work, res)
        measure_visibility([n.url for n in nodes], images, args.moves, res)
        text, ok = report(res, args, bool(args.distribution))
        args.out.write_text(text)
        print(text)
        return 0 if ok else 1
    finally:
        for node in started:
            stop(node)
        s3.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
