"""The registry's wall clock: ``time.time``, unless a test moves it forward.

Ages, TTLs and expiry read this clock: tag freshness in the pull-through cache, idle upload
sessions, garbage collection's grace period and retention ages. ``DOCKYARD_TEST_CLOCK_FILE=path``
adds the seconds written in that file to ``time.time()`` (re-read whenever the file is replaced),
so a test moves a server's time past a TTL instead of sleeping and hoping the machine is fast
enough. Unset (always, in production), ``wall_clock()`` is ``time.time`` itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_FILE_VARIABLE = "DOCKYARD_TEST_CLOCK_FILE"


def wall_clock() -> Callable[[], float]:
    path = os.environ.get(CLOCK_FILE_VARIABLE)
    return _OffsetClock(Path(path)) if path else time.time


class _OffsetClock:
    """``time.time()`` plus the offset in a file (a test writes it whole, then renames it in)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._offset = 0.0

    def __call__(self) -> float:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._seen, self._offset = None, 0.0
        else:
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                self._offset = float(self._path.read_text().strip() or 0)
                self._seen = seen
        return time.time() + self._offset
