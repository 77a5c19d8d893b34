"""Named crash points, for the crash tests.

``DOCKYARD_FAILPOINTS=commit.after_move,manifest.before_record`` makes the process SIGKILL itself
when it reaches one of the named points, so tests can prove that a crash exactly there loses
nothing acknowledged and leaves nothing half-written. Unset (always, in production), a check is
one lookup in an empty frozenset.
"""

from __future__ import annotations

import os
import signal

ACTIVE: frozenset[str] = frozenset(p for p in os.environ.get("DOCKYARD_FAILPOINTS", "").split(",") if p)


def crash_point(name: str) -> None:
    if name in ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
