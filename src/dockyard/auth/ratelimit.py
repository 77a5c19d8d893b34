"""Failed-login limits per client address and per user (per worker process)."""

from __future__ import annotations

import time
from collections import deque


class FailedLogins:
    def __init__(self, limit: int, window_seconds: float = 60.0) -> None:
        self.limit = limit
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, keys: list[str]) -> float | None:
        """Seconds until any of ``keys`` may try again, or None when none is blocked."""
        now = time.monotonic()
        waits = [
            times[0] + self.window - now
            for times in (self._recent(k, now) for k in keys)
            if len(times) >= self.limit
        ]
        return max(waits) if waits else None

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:
            self._failures.clear()
        for key in keys:
            self._recent(key, now).append(now)
