"""``Range`` request headers on blob GETs (RFC 9110 section 14)."""

from __future__ import annotations

import re

from dockyard.registry import errors

_SPEC = re.compile(r"[ \t]*([0-9]{0,19})[ \t]*-[ \t]*([0-9]{0,19})[ \t]*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range to send, or None for the whole representation.

    Forms: ``bytes=a-b`` (``b`` clamped to the end), ``bytes=a-``, ``bytes=-n`` (the last ``n``).
    A header that is not a single byte range is ignored, as RFC 9110 allows; a syntactically
    valid range that no byte satisfies raises 416.
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _SPEC.fullmatch(spec)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        raise _unsatisfiable(size)  # RFC 9110 calls it invalid; the spec's suite expects 416
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> errors.RegistryError:
    return errors.RegistryError(
        errors.RANGE_NOT_SATISFIABLE,
        headers={"Content-Range": f"bytes */{size}"},
        detail={"size": size},
    )
