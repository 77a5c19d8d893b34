"""htpasswd files with bcrypt entries: the format ``htpasswd -B`` writes and Distribution reads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

import bcrypt

_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
_CACHE_SECONDS = 300.0


def hash_password(password: str, rounds: int = 10) -> str:
    """A bcrypt hash with the ``$2y$`` prefix htpasswd uses (the same algorithm as ``$2b$``)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    return "$2y$" + hashed[4:]


def read_entries(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, hashed = line.partition(":")
        entries[user] = hashed
    return entries


def write_entries(path: Path, entries: dict[str, str]) -> None:
    """Replace the file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{user}:{hashed}\n" for user, hashed in sorted(entries.items()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def valid_user_name(user: str) -> bool:
    return bool(user) and len(user) <= 128 and ":" not in user and user.isprintable() and user.strip() == user


class Htpasswd:
    """Verifies user names and passwords; rereads the file when it changes (``dockyard user add``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._entries: dict[str, str] = {}
        self._verified: dict[bytes, float] = {}  # sha256(user, password, hash) -> until

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            self._entries, self._mtime = {}, None
            return
        if mtime != self._mtime:
            self._entries, self._mtime = read_entries(self.path), mtime
            self._verified.clear()

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._entries)

    def verify(self, user: str, password: str) -> bool:
        """Check a password (bcrypt: ~50-100 ms; run it off the event loop). Successes are
        remembered for a few minutes so clients that send Basic on every request stay fast."""
        self._refresh()
        hashed = self._entries.get(user)
        if hashed is None or not hashed.startswith(_BCRYPT_PREFIXES):
            bcrypt.checkpw(b"timing", _DUMMY)  # same cost whether or not the user exists
            return False
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed.encode()))).digest()
        now = time.monotonic()
        if self._verified.get(key, 0.0) > now:
            return True
        ok = False
        with contextlib.suppress(ValueError):
            ok = bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        if ok:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = now + _CACHE_SECONDS
        return ok

    def known_fast(self, user: str, password: str) -> bool:
        """True when this password was verified recently (no bcrypt needed)."""
        self._refresh()
        hashed = self._entries.get(user)
        if hashed is None:
            return False
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed.encode()))).digest()
        return self._verified.get(key, 0.0) > time.monotonic()


_DUMMY = bcrypt.hashpw(b"dummy", bcrypt.gensalt(10))
