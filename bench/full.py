"""Every bench, one after another, into one results file: bench/results-latest.md.

    . .venv/bin/activate
    python bench/full.py --distribution /path/to/registry        # ~45 minutes on 2 cores

Runs ``run.py`` (P1-P7 beside nginx), ``tls.py`` (T1-T3 over HTTPS beside nginx and
Distribution), ``smallwrites.py`` (P8, P9 and plain-HTTP P2 beside Distribution) and
``scale.py`` (P10-P12), each as its own process with its own references and interleaved rounds,
then writes one file: every row with a verdict first, each bench's whole report after. Exit
status 1 when any target fails. Without ``--distribution`` the rows compared with Distribution
show dockyard's figures alone.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BENCHES = [  # script, title
    ("run.py", "P1-P7: pulls and pushes beside nginx"),
    ("tls.py", "T1-T3: HTTPS beside nginx and Distribution"),
    ("smallwrites.py", "P8, P9, P2: small writes and manifest GETs beside Distribution"),
    ("scale.py", "P10-P12: garbage collection, memory, metadata at scale"),
]


def verdict_rows(markdown: str, script: str) -> list[str]:
    """The table rows of a report that carry a PASS or a FAIL, as list items: the row's name, its
    figures, its verdict."""
    found = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        # a verdict cell: PASS or FAIL, or one per target ("PASS, FAIL")
        cell = next((c for c in cells if c and set(c.replace(",", " ").split()) <= {"PASS", "FAIL"}), None)
        if not line.startswith("|") or cell is None:
            continue
        verdict = "FAIL" if "FAIL" in cell else "PASS"
        figures = " · ".join(c for c in cells[1:] if c and c != cell)
        found.append(f"- **{verdict}** {cells[0]}: {figures} ({script})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--distribution", type=Path, help="a CNCF Distribution binary (bench/distribution.py)"
    )
    parser.add_argument(
        "--only", default="", help="scripts to run, comma-separated (run, tls, smallwrites, scale)"
    )
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='more arguments for one bench, e.g. --with "scale=--rounds 1 --manifests 10000"',
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results-latest.md")
    args = parser.parse_args()
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    more = {name.strip(): shlex.split(rest) for name, _, rest in (e.partition("=") for e in args.extra)}
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    begun = time.monotonic()
    sections: list[str] = []
    verdicts: list[str] = []
    failed_scripts: list[str] = []
    chosen = [b for b in BENCHES if not wanted or b[0].removesuffix(".py") in wanted]

    def write(done: int) -> None:
        """The results file as it stands (rewritten after each bench: an interrupted run keeps
        what it measured)."""
        failing = [row for row in verdicts if row.startswith("- **FAIL**")]
        header = [
            "# dockyard benchmarks: one full run",
            "",
            f"`python bench/full.py {shlex.join(sys.argv[1:])}` at commit {commit}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.monotonic() - begun:.0f} s in all"
            + (f" (so far: {done} of {len(chosen)} benches)" if done < len(chosen) else "")
            + ".",
            "",
            f"{len(verdicts) - len(failing)} rows PASS, {len(failing)} FAIL"
            + (f"; did not report: {', '.join(failed_scripts)}" if failed_scripts else "")
            + ". Every row with a target (each compared with its reference in its own bench, below):",
            "",
            *verdicts,
            "",
        ]
        args.out.write_text("\n".join(header + sections) + "\n")

    with tempfile.TemporaryDirectory(prefix="dockyard-bench-full-") as tmp:
        for done, (script, title) in enumerate(chosen, 1):
            out = Path(tmp) / f"{script}.md"
            cmd = [sys.executable, str(BENCH_DIR / script), "--out", str(out)]
            cmd += more.get(script.removesuffix(".py"), [])
            if args.distribution and script != "run.py":
                cmd += ["--distribution", str(args.distribution)]
            print(f"== {script} ({title})", flush=True)
            started = time.monotonic()
            status = subprocess.run(cmd, cwd=BENCH_DIR).returncode
            took = time.monotonic() - started
            report = out.read_text() if out.exists() else ""
            if status not in (0, 1) or not report:
                failed_scripts.append(f"{script} exited {status} without a report")
            else:
                verdicts.extend(verdict_rows(report, script))
                sections.extend([f"## {title} (`{script}`, {took / 60:.1f} min)", "", report.strip(), ""])
            write(done)
    print(f"wrote {args.out}", flush=True)
    return 1 if failed_scripts or any(row.startswith("- **FAIL**") for row in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
