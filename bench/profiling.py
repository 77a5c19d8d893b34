"""Optional evidence for a slow workload: py-spy profiles of the workers, strace of syscalls.

``--profile`` records every worker with ``py-spy record --format raw`` for the length of each
workload and prints the top functions (self and inclusive share of the samples). ``strace``
checks that blob GETs go out with ``sendfile(2)`` and that pushes ``fsync`` before the 201.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Frames every stack shares (entry points, the loop's machinery): left out of "inclusive".
_GENERIC = (
    "click/",
    "runners.py",
    "base_events.py",
    "threading.py",
    "(dockyard)",
    "http/server.py",
    "events.py",
)
_FRAME_LINE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>[0-9]+))?\)$")


def pyspy() -> str | None:
    return shutil.which("py-spy")


@contextlib.contextmanager
def record(pids: list[int], out_dir: Path, label: str, rate: int = 250) -> Iterator[list[Path]]:
    """py-spy record each pid while the block runs; yields the raw output paths."""
    exe = pyspy()
    if exe is None:
        yield []
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, paths = [], []
    for pid in pids:
        path = out_dir / f"{label}-{pid}.txt"
        args = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--threads"]
        args += ["--nonblocking", "-o", str(path)]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        paths.append(path)
    time.sleep(0.5)  # py-spy attaches
    try:
        yield paths
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _frame_name(frame: str, keep_line: bool = False) -> str:
    m = _FRAME_LINE.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    if keep_line and m.group("line"):
        file = f"{file}:{m.group('line')}"
    return f"{m.group('func')} ({file})"


@dataclass
class Profile:
    """One worker's samples: how they split by thread, and where the event loop spends them."""

    samples: int = 0
    threads: collections.Counter[str] = field(default_factory=collections.Counter)
    loop_samples: int = 0
    loop_self: collections.Counter[str] = field(default_factory=collections.Counter)
    loop_lines: collections.Counter[str] = field(default_factory=collections.Counter)
    loop_inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    other_self: collections.Counter[str] = field(default_factory=collections.Counter)


def _thread_kind(frames: list[str]) -> str:
    if any("_run_worker" in f for f in frames):
        return "event loop"
    if any("aiosqlite/core.py" in f for f in frames):
        return "aiosqlite threads"
    if any("futures/thread.py" in f for f in frames):
        return "executor threads"
    if any("dockyard/" in f or "aiohttp/" in f or "asyncio/" in f for f in frames):
        # a stack py-spy caught mid greenlet switch (SQLAlchemy's async bridge) has no root
        return "event loop"
    return "other threads"


def summarize(path: Path) -> Profile:
    """Parse py-spy ``--format raw`` output (collapsed stacks with line numbers)."""
    prof = Profile()
    if not path.exists():
        return prof
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if not f.strip().startswith(("thread (", "process "))]
        if not raw:
            continue
        frames = [_frame_name(f) for f in raw]
        kind = _thread_kind(frames)
        prof.samples += n
        prof.threads[kind] += n
        if kind != "event loop":
            prof.other_self[f"[{kind}] {_frame_name(raw[-1], keep_line=True)}"] += n
            continue
        prof.loop_samples += n
        prof.loop_self[frames[-1]] += n
        prof.loop_lines[_frame_name(raw[-1], keep_line=True)] += n
        for name in set(frames):
            if not any(g in name for g in _GENERIC):
                prof.loop_inclusive[name] += n
    return prof


def report(paths: list[Path], seconds: float, rate: int = 250, top: int = 12) -> str:
    """Text summary per worker: the event loop's busy share, its top functions, other threads."""
    out = []
    wall = max(1.0, seconds * rate)
    for path in paths:
        p = summarize(path)
        out.append(
            f"  {path.name}: event loop busy ~{100.0 * p.loop_samples / wall:.0f}% of wall; "
            + "non-idle samples by thread: "
            + (", ".join(f"{k} {100.0 * v / wall:.0f}%" for k, v in p.threads.most_common()) or "none")
        )
        if not p.loop_samples:
            continue

        def rows(counter: collections.Counter[str], total: int, k: int) -> list[str]:
            return [f"      {100.0 * v / total:5.1f}%  {name}" for name, v in counter.most_common(k)]

        out.append("    event loop, self time (% of its busy samples):")
        out += rows(p.loop_self, p.loop_samples, top)
        out.append("    event loop, self time by line:")
        out += rows(p.loop_lines, p.loop_samples, 8)
        out.append("    event loop, inclusive:")
        out += rows(p.loop_inclusive, p.loop_samples, top)
        if p.other_self:
            out.append("    other threads, self time by line (% of wall; py-spy may count a blocked C call):")
            out += rows(p.other_self, int(wall), 5)
    return "\n".join(out)


# -- strace -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def strace(pids: list[int], out: Path, syscalls: str, extra: tuple[str, ...] = ()) -> Iterator[Path]:
    """strace -f (all threads) the pids for the block's duration; -y names the files of fds."""
    exe = shutil.which("strace")
    if exe is None:
        yield out
        return
    args = [exe, "-f", "-y", "-qq", *extra, "-e", f"trace={syscalls}", "-o", str(out)]
    for pid in pids:
        args += ["-p", str(pid)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach to every thread
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count_calls(trace: Path) -> dict[str, tuple[int, int]]:
    """syscall -> (calls, sum of positive return values) from an strace log."""
    calls: dict[str, list[int]] = {}
    if not trace.exists():
        return {}
    for line in trace.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+\s+(\w+)\(.*\)\s+=\s+(-?\d+)", line)
        if not m:
            continue
        entry = calls.setdefault(m.group(1), [0, 0])
        entry[0] += 1
        entry[1] += max(0, int(m.group(2)))
    return {k: (v[0], v[1]) for k, v in calls.items()}


def grep(trace: Path, pattern: str) -> list[str]:
    if not trace.exists():
        return []
    rx = re.compile(pattern)
    return [line for line in trace.read_text(errors="replace").splitlines() if rx.search(line)]


def strace_available() -> bool:
    return shutil.which("strace") is not None and (os.geteuid() == 0 or _ptrace_allowed())


def _ptrace_allowed() -> bool:
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0"
    except OSError:
        return True
