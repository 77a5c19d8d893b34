"""The resume state of a push: which upload session holds which blob, in a small JSON file.

A push interrupted by Ctrl-C, a crash or a lost network leaves its sessions open on the registry;
running the same command again finds them here, asks each where it stands and goes on from there.
The file sits in the OCI layout being pushed (``.dockyard-push.json``) and is removed when the
push completes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("dockyard.client")

STATE_FILE = ".dockyard-push.json"


class ResumeState:
    """Upload sessions by destination repository and digest; writes are atomic (rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._sessions: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                doc = json.loads(path.read_text())
                sessions = doc.get("sessions", {})
                if isinstance(sessions, dict):
                    self._sessions = {k: v for k, v in sessions.items() if isinstance(v, dict)}

    @staticmethod
    def key(destination: str, digest: str) -> str:
        return f"{destination}@{digest}"

    def get(self, destination: str, digest: str) -> dict[str, Any] | None:
        return self._sessions.get(self.key(destination, digest))

    def put(self, destination: str, digest: str, location: str, original: str, size: int) -> None:
        entry = {"location": location, "original": original, "size": size, "updated": time.time()}
        if self._sessions.get(self.key(destination, digest), {}).get("location") == location:
            return
        self._sessions[self.key(destination, digest)] = entry
        self._save()

    def drop(self, destination: str, digest: str) -> None:
        if self._sessions.pop(self.key(destination, digest), None) is not None:
            self._save()

    def __len__(self) -> int:
        return len(self._sessions)

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            if not self._sessions:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"version": 1, "sessions": self._sessions}, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the resume state %s (%s); this push cannot be resumed", self.path, exc)
            self.path = None
