"""Direct uploads' rules (docs/direct-uploads.md): which parts a client may ask URLs for, and
which parts the store must hold before the registry completes a session.

The store's own account of the parts (``ListParts``) is the only one trusted: a client reports
nothing but the part numbers and sizes it wants URLs for, and each URL is signed for that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dockyard.registry import errors
from dockyard.registry.ports import DirectUploads, StoredPart, UploadSession

MAX_PARTS_PER_REQUEST = 1000

# Not a spec error: the nearest spec code, with the status that says what is wrong.
DIRECT_MIX = errors.ErrorCode(
    "BLOB_UPLOAD_INVALID", 409, "direct parts and PATCH chunks do not mix in one upload session"
)
PARTS_INVALID = errors.ErrorCode("BLOB_UPLOAD_INVALID", 400, "the upload's parts cannot make a blob")
BLOB_TOO_LARGE = errors.ErrorCode("SIZE_INVALID", 413, "the blob exceeds the registry's size limit")


@dataclass(frozen=True)
class DirectStatus:
    """Where a direct session stands: the parts the store holds, and whether they were joined."""

    session: UploadSession
    kind: str
    parts: list[StoredPart]
    completed: bool
    limits: DirectUploads

    @property
    def contiguous(self) -> int:
        """Bytes in parts 1..k without a gap (what ``Range`` reports)."""
        total = 0
        for expected, part in enumerate(self.parts, start=1):
            if part.number != expected:
                break
            total += part.size
        return total

    def as_dict(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "kind": self.kind,
            "state": "completed" if self.completed else "open",
            "parts": [{"number": p.number, "size": p.size} for p in self.parts],
            "size": sum(p.size for p in self.parts),
            "min_part_size": limits.min_part_size,
            "max_part_size": limits.max_part_size,
            "max_parts": limits.max_parts,
            "max_size": limits.max_size,
            "url_expiry_seconds": limits.url_expiry_seconds,
        }


def _invalid(message: str, detail: Any = None) -> errors.RegistryError:
    return errors.RegistryError(PARTS_INVALID, message=message, detail=detail)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_part_request(doc: Any, limits: DirectUploads) -> list[StoredPart]:
    """``{"parts": [{"number": n, "size": bytes}, ...]}`` → the parts, checked against the limits."""
    entries = doc.get("parts") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise _invalid('the body must be {"parts": [{"number": N, "size": BYTES}, ...]}, one part or more')
    if len(entries) > MAX_PARTS_PER_REQUEST:
        raise _invalid(f"at most {MAX_PARTS_PER_REQUEST} parts per request")
    parts: dict[int, StoredPart] = {}
    for entry in entries:
        number = _integer(entry.get("number")) if isinstance(entry, dict) else None
        size = _integer(entry.get("size")) if isinstance(entry, dict) else None
        if number is None or size is None:
            raise _invalid("each part needs an integer number and size", detail={"part": entry})
        if not 1 <= number <= limits.max_parts:
            raise _invalid(f"part numbers go from 1 to {limits.max_parts}", detail={"number": number})
        if not 1 <= size <= min(limits.max_part_size, limits.max_size):
            raise _invalid(
                f"part {number}: a part holds 1 to {min(limits.max_part_size, limits.max_size)} bytes",
                detail={"number": number, "size": size},
            )
        if number in parts:
            raise _invalid(f"part {number} is named twice", detail={"number": number})
        parts[number] = StoredPart(number, size)
    return sorted(parts.values(), key=lambda p: p.number)


def check_parts(parts: Sequence[StoredPart], limits: DirectUploads, declared_size: int | None) -> int:
    """The size of the blob ``parts`` make, if they may be completed; else a clear refusal.

    Part numbers must run 1..n without a gap, and every part but the last must have at least
    ``min_part_size`` bytes (S3's rule: some stores only enforce it at completion, some never).
    """
    held = [{"number": p.number, "size": p.size} for p in parts]
    if not parts:
        raise _invalid("no parts were uploaded to the store", detail={"parts": held})
    for expected, part in enumerate(parts, start=1):
        if part.number != expected:
            raise _invalid(f"part {expected} is missing", detail={"missing": expected, "parts": held})
    for part in parts:
        if part.ambiguous:
            raise _invalid(
                f"the store holds two uploads of part {part.number} and cannot tell which is newer: "
                "upload the part again",
                detail={"number": part.number, "parts": held},
            )
    for part in parts[:-1]:
        if part.size < limits.min_part_size:
            raise _invalid(
                f"part {part.number} has {part.size} bytes: every part but the last needs at least "
                f"{limits.min_part_size}",
                detail={"number": part.number, "size": part.size, "parts": held},
            )
    size = sum(p.size for p in parts)
    if size > limits.max_size:
        raise errors.RegistryError(BLOB_TOO_LARGE, detail={"size": size, "limit": limits.max_size})
    if declared_size is not None and declared_size != size:
        raise _invalid(
            f"the parts hold {size} bytes, not the {declared_size} declared",
            detail={"size": size, "declared": declared_size, "parts": held},
        )
    return size
