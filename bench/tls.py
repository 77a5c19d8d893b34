"""dockyard over HTTPS beside nginx and CNCF Distribution, all with one self-signed P-256 certificate.

    . .venv/bin/activate
    python bench/tls.py [--rounds 5] [--distribution PATH/TO/registry]   # ~5 minutes
    python bench/tls.py --quick                                          # small sizes, ~1 minute

T1 ``GET`` a 256 MiB blob (curl, warm page cache), T2 ``GET`` a manifest by tag (wrk -t2 -c32),
T3 a monolithic 256 MiB push (``POST``, then ``PUT ?digest=`` streamed by curl), all over HTTPS;
then plain HTTP, dockyard on its default loop (uvloop) against dockyard on the stock loop
(``event_loop: asyncio``): P1 blob ``GET``, P2 manifest ``GET``. Every target takes its turn
within a round, the order rotating from round to round, and each ratio is the median of the
rounds' ratios, so a machine whose load drifts weighs on both sides alike. Writes
bench/results-tls.md (see bench/README.md "HTTPS").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profiling
import pushclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distribution import Node, add_distribution_option, filesystem_storage, start_distribution, stop
from procs import CpuMeter, Dockyard, Nginx, check_tools, curl_speed, curl_upload, wrk
from profiling import strace_available
from run import MB, environment, human, ratio_text, verdict, wait_quiet, warm
from sources import BlobFile, MiB, Synthetic, run_seed

BENCH_DIR = Path(__file__).resolve().parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Sizes:
    blob: int
    rate_seconds: float
    rounds: int


FULL = Sizes(256 * MiB, 5.0, 5)
QUICK = Sizes(64 * MiB, 3.0, 3)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass
class Target:
    """One server measured: where its blob and manifest are, and how a push reaches it."""

    name: str
    base: str
    blob_url: str
    manifest_url: str
    pushes: bool  # nginx serves files, it takes no pushes
    repo: str = "bench/tls"


@dataclass
class Samples:
    """Per workload: each target's figure per round, and the CPU other processes used meanwhile."""

    figures: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(dict))
    foreign: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, workload: str, target: str, value: float) -> None:
        self.figures[workload].setdefault(target, []).append(value)

    def ratios(self, workload: str, ours: str, theirs: str) -> list[float]:
        mine, other = self.figures[workload].get(ours, []), self.figures[workload].get(theirs, [])
        return [a / b for a, b in zip(mine, other, strict=False) if b]

    def median(self, workload: str, target: str) -> float | None:
        values = self.figures[workload].get(target)
        return statistics.median(values) if values else None

    def noise(self, workload: str) -> str:
        values = self.foreign.get(workload)
        return f"{100 * statistics.median(values):.0f}%" if values else ""


def log(text: str) -> None:
    print(text, flush=True)


def rotated(items: list[Target], by: int) -> list[Target]:
    by %= len(items)
    return items[by:] + items[:by]


def post_location(base: str, repo: str, context: ssl.SSLContext | None) -> tuple[str, float]:
    """``POST`` a new upload session: (its absolute URL, seconds)."""
    t0 = time.perf_counter()
    request = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(request, context=context, timeout=60) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST {base}: HTTP {resp.status}")
        location = resp.headers["Location"]
    return urljoin(base, location), time.perf_counter() - t0


def push_file(target: Target, blob: BlobFile, cert: Path | None, context: ssl.SSLContext | None) -> float:
    """T3: ``POST`` + ``PUT ?digest=`` with the file as the body; seconds from the POST to the 201."""
    location, post_seconds = post_location(target.base, target.repo, context)
    url = location + ("&" if "?" in location else "?") + f"digest={blob.digest}"
    status, put_seconds = curl_upload(url, blob.path, cert)
    if status != 201:
        raise RuntimeError(f"PUT to {target.name}: HTTP {status}")
    return post_seconds + put_seconds


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.work = work
        self.seed = run_seed()
        self.samples = Samples()
        self.notes: list[str] = []
        self.profiles: list[str] = []
        self.meter = CpuMeter()
        self.servers: list[Dockyard] = []
        self.nginx: list[Nginx] = []
        self.nodes: list[Node] = []

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  note: {text}")

    # -- setup ------------------------------------------------------------------------------------

    def start_dockyard(self, name: str, **kwargs: object) -> Dockyard:
        server = Dockyard(self.work / name, self.work / f"{name}.log", **kwargs)  # type: ignore[arg-type]
        server.start()
        self.servers.append(server)
        return server

    async def seed_content(self, base: str, context: ssl.SSLContext | None, blob: Synthetic) -> None:
        """The same blob and the same manifest bytes (same seed) on every server."""
        async with pushclient.new_session(ssl_context=context) as http:
            await pushclient.push_monolithic(http, base, "bench/tls", blob)
            await pushclient.push_manifest(http, base, "bench/tls", "latest", self.seed)

    def measure(
        self, workload: str, targets: list[Target], round_: int, one: Callable[[Target], float]
    ) -> None:
        if self.args.wait_quiet:
            asyncio.run(wait_quiet(self.meter, self.args.wait_quiet))
        before = self.meter.snapshot()
        for target in rotated(targets, round_):
            value = one(target)
            self.samples.add(workload, target.name, value)
        foreign, _steal = self.meter.foreign_share(before, self.meter.snapshot())
        self.samples.foreign[workload].append(foreign)
        figures = {t.name: round(self.samples.figures[workload][t.name][-1]) for t in targets}
        log(f"  round {round_ + 1} {workload}: {figures} (other CPU {100 * foreign:.0f}%)")

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> int:
        s = self.sizes
        cert, key = make_certificate(self.work)
        context = ssl.create_default_context(cafile=str(cert))
        tls = self.start_dockyard("dockyard-tls", tls=(cert, key))
        plain = self.start_dockyard("dockyard-plain")
        stock = self.start_dockyard("dockyard-asyncio", settings={"DOCKYARD_EVENT_LOOP": "asyncio"})
        for server in self.servers:
            lines = server.log_path.read_text().splitlines()
            loops = sorted(
                {line.split(" on the ")[1].split()[0] for line in lines if "serving on the" in line}
            )
            log(f"{server.log_path.stem}: {server.base}, workers {server.workers()}, loop {loops}")
        blob = Synthetic(self.seed, s.blob)
        log(f"setup: pushing the {human(s.blob)} blob and a manifest to every server")
        _ = blob.digest
        for server in self.servers:
            asyncio.run(self.seed_content(server.base, context if server.tls else None, blob))
        blob_file = tls.blob_path(blob.digest)
        manifest_digest = self.manifest_digest(tls.base, context)
        nginx = Nginx(self.work / "nginx", blob_file, tls.blob_path(manifest_digest), tls=(cert, key))
        nginx.start()
        self.nginx.append(nginx)
        path = "/v2/bench/tls"
        https = [
            Target(
                "dockyard",
                tls.base,
                f"{tls.base}{path}/blobs/{blob.digest}",
                f"{tls.base}{path}/manifests/latest",
                True,
            ),
            Target("nginx", nginx.base, f"{nginx.base}/blob", f"{nginx.base}/manifest", False),
        ]
        if self.args.distribution:
            node = start_distribution(
                self.args.distribution,
                self.work,
                filesystem_storage(self.work / "distribution"),
                tls=(cert, key),
            )
            self.nodes.append(node)
            asyncio.run(self.seed_content(node.url, context, blob))
            https.append(
                Target(
                    "distribution",
                    node.url,
                    f"{node.url}{path}/blobs/{blob.digest}",
                    f"{node.url}{path}/manifests/latest",
                    True,
                )
            )
        loops = [
            Target(
                "uvloop",
                plain.base,
                f"{plain.base}{path}/blobs/{blob.digest}",
                f"{plain.base}{path}/manifests/latest",
                True,
            ),
            Target(
                "asyncio",
                stock.base,
                f"{stock.base}{path}/blobs/{blob.digest}",
                f"{stock.base}{path}/manifests/latest",
                True,
            ),
        ]
        self.check_same_bytes(https + loops, context, s.blob)

        pushers = [t for t in https if t.pushes]
        files_dir = self.work / "sources"
        files_dir.mkdir()
        log(f"setup: writing {s.rounds * len(pushers)} files of {human(s.blob)} for the pushes")
        sources = [
            BlobFile.write(files_dir / f"t3-{i}", self.seed + 1 + i, s.blob)
            for i in range(s.rounds * len(pushers))
        ]
        os.sync()
        for server in self.servers:
            warm(server.blob_path(blob.digest))
        for target in https + loops:  # warm every path once, unmeasured
            curl_speed(target.blob_url, cert if target.base.startswith("https") else None)

        accept = {"Accept": OCI_MANIFEST}
        t0 = time.perf_counter()
        for r in range(s.rounds):
            log(f"round {r + 1} of {s.rounds}")
            self.measure("T1", https, r, lambda t: self.get_blob(t, cert))
            self.measure("T2", https, r, lambda t: self.rate(t, accept))
            batch = sources[r * len(pushers) : (r + 1) * len(pushers)]
            files = {t.name: f for t, f in zip(pushers, batch, strict=True)}

            def push(t: Target, files: dict[str, BlobFile] = files) -> float:
                return s.blob / push_file(t, files[t.name], cert, context) / MB

            with self.profiled(f"T3-round{r + 1}", tls):
                self.measure("T3", pushers, r, push)
            self.measure("P1", loops, r, lambda t: self.get_blob(t, None))
            self.measure("P2", loops, r, lambda t: self.rate(t, accept))
        elapsed = time.perf_counter() - t0
        if self.args.checks and strace_available():
            self.sendfile_check(plain, loops[0].blob_url, s.blob, "plain HTTP, uvloop")
            self.sendfile_check(stock, loops[1].blob_url, s.blob, "plain HTTP, stock loop")
        return self.report(elapsed)

    def manifest_digest(self, base: str, context: ssl.SSLContext) -> str:
        request = urllib.request.Request(
            f"{base}/v2/bench/tls/manifests/latest", headers={"Accept": OCI_MANIFEST}
        )
        with urllib.request.urlopen(request, context=context) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def check_same_bytes(self, targets: list[Target], context: ssl.SSLContext, size: int) -> None:
        bodies = set()
        for target in targets:
            request = urllib.request.Request(target.manifest_url, headers={"Accept": OCI_MANIFEST})
            with urllib.request.urlopen(request, context=context) as resp:
                bodies.add(resp.read())
        if len(bodies) != 1:
            raise RuntimeError("the servers answer different manifest bytes")

    def get_blob(self, target: Target, cert: Path | None) -> float:
        speed, got = curl_speed(target.blob_url, cert)
        if got != self.sizes.blob:
            raise RuntimeError(f"GET {target.blob_url}: {got} bytes, expected {self.sizes.blob}")
        return speed / MB

    def rate(self, target: Target, headers: dict[str, str]) -> float:
        url = target.manifest_url
        result = wrk(
            url, connections=32, duration=self.sizes.rate_seconds, threads=2, script=None, headers=headers
        )
        if result.errors:
            self.note(f"{target.name} {url}: wrk reported {result.errors}")
        return result.requests_per_s

    def profiled(self, label: str, server: Dockyard) -> contextlib.AbstractContextManager[object]:
        if not self.args.profile:
            return contextlib.nullcontext()
        return _Profile(self, label, server)

    def sendfile_check(self, server: Dockyard, url: str, size: int, what: str) -> None:
        trace = self.work / f"strace-{server.port}.txt"
        with profiling.strace(server.workers(), trace, "sendfile,write,writev,sendto,sendmsg"):
            curl_speed(url)
        calls = profiling.count_calls(trace)
        sf_calls, sf_bytes = calls.get("sendfile", (0, 0))
        other = sum(b for k, (_, b) in calls.items() if k != "sendfile")
        self.note(
            f"sendfile check ({what}; strace -f on the workers, one GET of {human(size)}): {sf_calls} "
            f"sendfile calls moved {sf_bytes / MiB:,.0f} MiB; write/writev/sendto/sendmsg moved "
            f"{other / MiB:,.1f} MiB"
            + (" — blob GETs use sendfile" if sf_bytes >= size * 0.99 else " — blob GETs do NOT use sendfile")
        )

    # -- the report ---------------------------------------------------------------------------------

    def report(self, elapsed: float) -> int:
        s = self.samples
        has_distribution = bool(self.args.distribution)
        rows: list[list[str]] = []
        failed = False

        def figure(workload: str, target: str, unit: str) -> str:
            value = s.median(workload, target)
            return "—" if value is None else f"{value:,.0f} {unit}"

        def check(workload: str, ours: str, theirs: str, target: float) -> tuple[str, str]:
            nonlocal failed
            ratios = s.ratios(workload, ours, theirs)
            if not ratios:
                return "—", "skipped"
            value = statistics.median(ratios)
            failed |= value < target
            return ratio_text(value), verdict(value >= target)

        spec = [
            ("T1", f"T1 GET {human(self.sizes.blob)} blob, curl, warm cache", "MB/s", 1.0, 0.7),
            (
                "T2",
                f"T2 GET manifest by tag, wrk -t2 -c32, {self.sizes.rate_seconds:.0f} s",
                "req/s",
                1.5,
                None,
            ),
            ("T3", f"T3 push {human(self.sizes.blob)}, POST + PUT ?digest= (curl -T)", "MB/s", 0.9, None),
        ]
        for workload, label, unit, vs_distribution, vs_nginx in spec:
            d_ratio, d_verdict = check(workload, "dockyard", "distribution", vs_distribution)
            if vs_nginx is not None:
                n_ratio, n_verdict = check(workload, "dockyard", "nginx", vs_nginx)
            else:
                against_nginx = s.ratios(workload, "dockyard", "nginx")
                n_ratio = ratio_text(statistics.median(against_nginx)) if against_nginx else "—"
                n_verdict = ""
            targets = [f"≥ {vs_distribution:g}x Distribution"] + (
                [f"≥ {vs_nginx:g}x nginx"] if vs_nginx else []
            )
            verdicts = [d_verdict if has_distribution else "skipped"] + ([n_verdict] if vs_nginx else [])
            rows.append(
                [
                    label,
                    figure(workload, "dockyard", unit),
                    figure(workload, "nginx", unit),
                    figure(workload, "distribution", unit),
                    n_ratio,
                    d_ratio,
                    ", ".join(targets),
                    ", ".join(verdicts),
                    s.noise(workload),
                ]
            )
        plain_rows: list[list[str]] = []
        for workload, label, unit in (
            ("P1", f"P1 GET {human(self.sizes.blob)} blob, curl, warm cache", "MB/s"),
            ("P2", f"P2 GET manifest by tag, wrk -t2 -c32, {self.sizes.rate_seconds:.0f} s", "req/s"),
        ):
            ratio, result = check(workload, "uvloop", "asyncio", 0.95)
            plain_rows.append(
                [
                    label,
                    figure(workload, "uvloop", unit),
                    figure(workload, "asyncio", unit),
                    ratio,
                    "≥ 0.95x",
                    result,
                    s.noise(workload),
                ]
            )

        md = ["# dockyard over HTTPS (bench/tls.py)", "", *environment()]
        md.append(f"- rounds: {self.sizes.rounds} (targets in rotating order), measured part {elapsed:.0f} s")
        md += [
            "- dockyard: 2 workers, default settings; nginx: `worker_processes auto`; Distribution: one Go "
            "process; all with one self-signed P-256 certificate, on this machine's cores",
            "",
            "Over HTTPS; ratios are the median of the rounds' ratios.",
            "",
            "| workload | dockyard | nginx | Distribution | ratio vs nginx | ratio vs Distribution | target | result | other CPU |",  # noqa: E501
            "|---|---|---|---|---|---|---|---|---|",
        ]
        md += ["| " + " | ".join(row) + " |" for row in rows]
        md += [
            "",
            "Plain HTTP, dockyard on uvloop (the default) against dockyard with `event_loop: asyncio`:",
            "",
            "| workload | uvloop | stock loop | ratio | target | result | other CPU |",
            "|---|---|---|---|---|---|---|",
        ]
        md += ["| " + " | ".join(row) + " |" for row in plain_rows]
        md += ["", "Per round (in the order measured within each row: rotating):", ""]
        for workload, by_target in s.figures.items():
            parts = [f"{name} {', '.join(f'{v:,.0f}' for v in values)}" for name, values in by_target.items()]
            md.append(f"- {workload}: " + "; ".join(parts))
        if self.notes:
            md += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        text = "\n".join(md) + "\n"
        out = self.args.out or BENCH_DIR / ("results-tls-quick.md" if self.args.quick else "results-tls.md")
        out.write_text(text)
        if self.profiles:
            out.with_name(out.stem + "-profiles.txt").write_text("\n\n".join(self.profiles) + "\n")
        log("\n" + text)
        log(f"wrote {out}")
        return 1 if failed else 0

    def stop(self) -> None:
        for nginx in self.nginx:
            nginx.stop()
        for node in self.nodes:
            stop(node)
        for server in self.servers:
            server.stop()


class _Profile:
    """py-spy on the TLS server's workers for one block (``--profile``)."""

    def __init__(self, bench: Bench, label: str, server: Dockyard) -> None:
        self.bench, self.label, self.server = bench, label, server
        self._cm: contextlib.AbstractContextManager[list[Path]] | None = None
        self._paths: list[Path] = []
        self._t0 = 0.0

    def __enter__(self) -> object:
        self._cm = profiling.record(self.server.workers(), self.bench.work / "profiles", self.label)
        self._paths = self._cm.__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._cm is not None
        seconds = time.perf_counter() - self._t0
        self._cm.__exit__(None, None, None)
        self.bench.profiles.append(
            f"{self.label} ({seconds:.1f} s)\n" + profiling.report(self._paths, seconds)
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB blobs, 3 s rate runs, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; --quick 3)")
    add_distribution_option(parser)
    parser.add_argument("--workdir", type=Path, help="where the temp dir goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs, profiles)")
    parser.add_argument("--out", type=Path, help="markdown results file (default: bench/results-tls.md)")
    parser.add_argument("--profile", action="store_true", help="py-spy the TLS server's workers during T3")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each workload, wait up to S s for a quiet machine",
    )
    parser.add_argument(
        "--no-checks", dest="checks", action="store_false", help="skip the strace sendfile checks"
    )
    args = parser.parse_args()
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
    if args.distribution and not os.access(args.distribution, os.X_OK):
        print(f"--distribution {args.distribution}: not an executable file", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(sizes.blob, sizes.rate_seconds, args.rounds)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dockyard-tls-", dir=args.workdir))

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    bench = Bench(args, sizes, work)
    try:
        return bench.run()
    except KeyboardInterrupt:
        return 130
    finally:
        bench.stop()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
