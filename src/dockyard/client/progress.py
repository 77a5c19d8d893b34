"""Progress per blob: bars (bytes, rate, ETA) on a terminal, plain lines when not."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class _Item:
    label: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    base: int = 0  # bytes already there when this run started (resumed)
    last_line: float = 0.0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self.base) / elapsed if elapsed > 0.2 else 0.0


class Progress:
    """Where each blob stands. ``Progress.for_stream`` picks bars or lines; ``quiet`` says nothing."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False, interval: float = 10.0) -> None:
        self.out = out or sys.stderr
        self.quiet = quiet
        self.interval = interval  # seconds between plain progress lines for one blob
        self.items: dict[str, _Item] = {}

    @staticmethod
    def for_stream(out: TextIO | None = None, *, quiet: bool = False) -> Progress:
        stream = out or sys.stderr
        if not quiet and stream.isatty():
            return BarProgress(stream)
        return Progress(stream, quiet=quiet)

    def start(self, key: str, label: str, total: int, done: int = 0) -> None:
        self.items[key] = _Item(label, total, done, base=done)
        if done:
            self.line(f"{label}: resuming at {human(done)} of {human(total)}")
        else:
            self.line(f"{label}: {human(total)}")

    def update(self, key: str, done: int) -> None:
        item = self.items.get(key)
        if item is None:
            return
        item.done = done
        now = time.monotonic()
        if now - max(item.last_line, item.started) >= self.interval:
            item.last_line = now
            self.line(self._status(item))

    def finish(self, key: str, message: str) -> None:
        item = self.items.pop(key, None)
        if item is None:
            self.line(message)
            return
        elapsed = time.monotonic() - item.started
        rate = (item.total - item.base) / elapsed if elapsed > 0 else 0
        self.line(f"{item.label}: {message} ({human(item.total)} in {elapsed:.1f}s, {human(rate)}/s)")

    def note(self, key: str, message: str) -> None:
        item = self.items.get(key)
        self.line(f"{item.label if item else key}: {message}")

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def close(self) -> None:
        pass

    @staticmethod
    def _status(item: _Item) -> str:
        rate = item.rate()
        pct = 100 * item.done / item.total if item.total else 100
        eta = duration((item.total - item.done) / rate) if rate > 0 else "--:--"
        return (
            f"{item.label}: {human(item.done)} / {human(item.total)} ({pct:.0f}%), {human(rate)}/s, ETA {eta}"
        )


class BarProgress(Progress):
    """One bar per blob in flight, redrawn in place (at most ten times a second)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        self._drawn = 0
        self._last_draw = 0.0

    def update(self, key: str, done: int) -> None:
        item = self.items.get(key)
        if item is None:
            return
        item.done = done
        if time.monotonic() - self._last_draw >= 0.1:
            self._draw()

    def start(self, key: str, label: str, total: int, done: int = 0) -> None:
        self.items[key] = _Item(label, total, done, base=done)
        self._draw()

    def line(self, text: str) -> None:
        self._erase()
        print(text, file=self.out)
        self._draw()

    def close(self) -> None:
        self._erase()

    def _erase(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        self._erase()
        width = 24
        lines = []
        for item in list(self.items.values())[:20]:
            frac = item.done / item.total if item.total else 1.0
            filled = int(width * frac)
            bar = "#" * filled + "-" * (width - filled)
            rate = item.rate()
            eta = duration((item.total - item.done) / rate) if rate > 0 else "--:--"
            lines.append(
                f"{item.label[:28]:<28} [{bar}] {human(item.done):>10} / {human(item.total):<10}"
                f" {human(rate):>10}/s ETA {eta}"
            )
        for text in lines:
            self.out.write(text + "\n")
        self._drawn = len(lines)
        self.out.flush()
        self._last_draw = time.monotonic()
