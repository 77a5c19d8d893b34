"""Upload-session rules (spec: "Pushing a blob in chunks"; ARCHITECTURE.md "Upload sessions")."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from dockyard.registry import errors
from dockyard.registry.digests import Hasher
from dockyard.registry.ports import UploadSession

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?")


@dataclass(frozen=True)
class ChunkRange:
    """An upload chunk's inclusive byte range (``Content-Range: <start>-<end>``)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @classmethod
    def parse(cls, text: str) -> ChunkRange:
        m = _CONTENT_RANGE.fullmatch(text.strip())
        if not m:
            raise errors.RegistryError(
                errors.BLOB_UPLOAD_INVALID, message=f"invalid Content-Range {text[:80]!r}"
            )
        start, end = int(m.group(1)), int(m.group(2))
        if end < start:
            raise errors.RegistryError(
                errors.UPLOAD_RANGE_INVALID, message=f"Content-Range {text[:80]!r} ends before it starts"
            )
        return cls(start, end)


class SessionError(errors.RegistryError):
    """An error about an upload session that also tells where the session stands."""

    def __init__(self, error: errors.ErrorCode, session: UploadSession, message: str) -> None:
        super().__init__(error, message=message)
        self.session = session


class UploadOutOfOrder(SessionError):
    """A 416 with Location and Range, so the client can continue at once."""

    def __init__(self, session: UploadSession, message: str) -> None:
        super().__init__(errors.UPLOAD_RANGE_INVALID, session, message)


def range_header(offset: int) -> str:
    """``0-<last byte>``; an empty session is ``0--1`` (no last byte), never the ambiguous ``0-0``."""
    return f"0-{offset - 1}"


class LiveHashers:
    """Hash state a worker keeps for the sessions whose bytes it has streamed.

    Hash state is not persisted (ARCHITECTURE.md "Hashing"); when a session moves to another
    worker or the process restarts, the commit re-reads the staged bytes once instead.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[int, str, Hasher]] = OrderedDict()

    def take(self, session: UploadSession) -> Hasher | None:
        """The hasher that has seen exactly the session's staged bytes, if this worker has it."""
        entry = self._entries.pop(session.id, None)
        if entry is None:
            return None
        offset, algorithm, hasher = entry
        if offset != session.offset or algorithm != session.algorithm:
            return None
        return hasher

    def keep(self, session: UploadSession, hasher: Hasher) -> None:
        self._entries[session.id] = (session.offset, session.algorithm, hasher)
        self._entries.move_to_end(session.id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)
