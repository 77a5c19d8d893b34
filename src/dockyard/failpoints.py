"""Named fault points, for the crash and fault tests. Unset (always, in production), a check is
one lookup in an empty mapping.

**Die here.** ``DOCKYARD_FAILPOINTS=commit.after_move,manifest.before_record`` makes the process
SIGKILL itself when it reaches one of the named points, so tests can prove that a crash exactly
there loses nothing acknowledged and leaves nothing half-written.

**Raise here.** ``DOCKYARD_FAILPOINTS_RAISE=patch.close,commit.link*1`` makes the named points
fail the way the part underneath fails there: a storage point raises ``OSError(EIO)`` (as a
failing disk or object store does; ``=enospc`` after the name: a full disk), a database point
raises ``DependencyUnavailable`` (as the metadata adapter does when the database is away). A
``*N`` suffix fails only N passes (per process), so a test can check that the registry
recovers; ``>K`` lets the first K passes through (``manifest.record>1*1``: the second manifest
push fails, say a tag move). Tests prove that no such failure is ever answered with a 2xx and that nothing
half-written becomes visible. The points (where they sit: what fails there):

- ``upload.create`` (POST opening a session: the session's row)
- ``patch.write`` (a chunk's bytes onto the staging area), ``staging.close`` (the staging
  writer's last flush: the filesystem's final write, the object store's tail object or last
  part), ``patch.save`` (the session's new offset)
- ``commit.move`` (verified bytes into place under the digest), ``commit.link`` (the blob's row
  and the repository's link)
- ``manifest.put`` (the manifest's bytes), ``manifest.record`` (its row, references and tags:
  also a tag move)
- ``mount.link`` (a cross-repository mount's link)
- ``delete.record`` (deleting a blob link, a manifest or a tag)
- ``gc.forget`` (the collector forgetting an unlinked blob's record), ``gc.delete`` (then its bytes)
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass

from dockyard.registry.errors import DependencyUnavailable

ACTIVE: frozenset[str] = frozenset(p for p in os.environ.get("DOCKYARD_FAILPOINTS", "").split(",") if p)


@dataclass
class _Point:
    kind: str  # "eio" or "enospc" (storage points)
    skip: int  # passes that go through before the first failure
    count: int  # failures left (-1: every pass)


_SPEC = re.compile(r"([\w.]+)(?:=(eio|enospc))?(?:>(\d+))?(?:\*(\d+))?")


def _parse_raise(spec: str) -> dict[str, _Point]:
    """``name[=enospc][>K][*N]``, comma-separated: fail after K passes, N times (else always)."""
    points: dict[str, _Point] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        match = _SPEC.fullmatch(entry)
        if match is None:
            raise ValueError(f"DOCKYARD_FAILPOINTS_RAISE: cannot read {entry!r}")
        name, kind, skip, count = match.groups()
        points[name] = _Point(kind or "eio", int(skip or 0), int(count) if count else -1)
    return points


RAISING: dict[str, _Point] = _parse_raise(os.environ.get("DOCKYARD_FAILPOINTS_RAISE", ""))


def crash_point(name: str) -> None:
    if name in ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)


def _armed(name: str) -> str | None:
    """The failure kind if ``name`` fails this pass (counting the pass), else None."""
    point = RAISING.get(name)
    if point is None or point.count == 0:
        return None
    if point.skip > 0:
        point.skip -= 1
        return None
    if point.count > 0:
        point.count -= 1
    return point.kind


def storage_fault_point(name: str) -> None:
    """Fail here as storage does: ``OSError(EIO)`` (or ``ENOSPC`` for ``=enospc``)."""
    kind = _armed(name)
    if kind is not None:
        code = errno.ENOSPC if kind == "enospc" else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (fault point {name})")


def database_fault_point(name: str) -> None:
    """Fail here as the metadata adapter does when the database is away."""
    if _armed(name) is not None:
        raise DependencyUnavailable("database", f"fault point {name}")
