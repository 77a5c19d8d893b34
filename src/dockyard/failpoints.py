"""Named fault points, for the crash and fault tests. Unset (always, in production), a check is
one lookup in an empty mapping.

**Die here.** ``DOCKYARD_FAILPOINTS=commit.after_move,manifest.before_record`` makes the process
SIGKILL itself when it reaches one of the named points, so tests can prove that a crash exactly
there loses nothing acknowledged and leaves nothing half-written.

**Raise here.** ``DOCKYARD_FAILPOINTS_RAISE=patch.close,commit.link*1`` makes the named points
fail the way the part underneath fails there: a storage point raises ``OSError(EIO)`` (as a
failing disk or object store does; ``=enospc`` after the name: a full disk), a database point
raises ``DependencyUnavailable`` (as the metadata adapter does when the database is away). A
``*N`` suffix fails only the first N passes (per process), so a test can check that the
registry recovers. Tests prove that no such failure is ever answered with a 2xx and that nothing
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
import signal

from dockyard.registry.errors import DependencyUnavailable

ACTIVE: frozenset[str] = frozenset(p for p in os.environ.get("DOCKYARD_FAILPOINTS", "").split(",") if p)


def _parse_raise(spec: str) -> dict[str, list[int | str]]:
    """``name[=enospc][*N]`` entries → {name: [passes left (-1: always), errno name]}."""
    points: dict[str, list[int | str]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        entry, _, count = entry.partition("*")
        name, _, kind = entry.partition("=")
        points[name] = [int(count) if count else -1, kind or "eio"]
    return points


RAISING: dict[str, list[int | str]] = _parse_raise(os.environ.get("DOCKYARD_FAILPOINTS_RAISE", ""))


def crash_point(name: str) -> None:
    if name in ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)


def _armed(name: str) -> str | None:
    """The failure kind if ``name`` fails this pass (counting the pass), else None."""
    point = RAISING.get(name)
    if point is None or point[0] == 0:
        return None
    if isinstance(point[0], int) and point[0] > 0:
        point[0] -= 1
    return str(point[1])


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
