"""Helpers for the reliability suite: counters, raw sockets that lie, error checks, fsck, file trees."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.api_helpers import SPEC_CODES, RawResponse, parse_raw_response

# The numbers the lead reports: filled by the tests, printed by ``conftest.pytest_terminal_summary``.
STATS: Counter[str] = Counter()


# The spec's expressions, copied verbatim: the tests hold the code to the spec, not to itself.
SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


def spec_allows_name(text: str) -> bool:
    return len(text) <= 255 and SPEC_NAME.fullmatch(text) is not None


def spec_allows_tag(text: str) -> bool:
    return SPEC_TAG.fullmatch(text) is not None


def spec_allows_digest(text: str) -> bool:
    """A digest this registry must accept: a registered algorithm and lowercase hex of its length."""
    algorithm, sep, encoded = text.partition(":")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    return bool(sep) and length == len(encoded) and re.fullmatch(r"[0-9a-f]+", encoded) is not None


def error_doc(status: int, content_type: str | None, body: bytes) -> dict[str, Any]:
    """The spec's JSON error body of a 4xx answer, checked entry by entry; returns the document."""
    assert 400 <= status < 500, (status, body[:300])
    assert (content_type or "").startswith("application/json"), (status, content_type, body[:300])
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], doc
    for entry in doc["errors"]:
        assert isinstance(entry, dict), doc
        assert entry.get("code") in SPEC_CODES, doc
        assert isinstance(entry.get("message"), str), doc
    return doc


def check_raw_error(
    response: RawResponse, statuses: int | set[int] | tuple[int, ...], codes: str | set[str] | None = None
) -> str:
    """A raw answer is one of ``statuses`` with a spec JSON error body naming one of ``codes``."""
    allowed = {statuses} if isinstance(statuses, int) else set(statuses)
    assert response.status in allowed, (response.status, allowed, response.body[:300])
    doc = error_doc(response.status, response.headers.get("content-type"), response.body)
    code: str = doc["errors"][0]["code"]
    if codes is not None:
        wanted = {codes} if isinstance(codes, str) else codes
        assert code in wanted, (code, wanted, doc)
    return code


# -- raw sockets: requests exactly as written, bodies that lie ----------------------------------


def request_head(method: str, target: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_raw(port: int, data: bytes, *, close_early: bool = False, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes (or resets) it.

    ``close_early``: close the connection right after sending, as a client that dies mid-body
    does; nothing can be read back then.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    received = b""
    try:
        sock.sendall(data)
        if close_early:
            return b""
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    finally:
        sock.close()
    return received


def status_lines(data: bytes) -> list[int]:
    """The status code of every response in a (possibly pipelined) answer stream."""
    return [int(m.group(1)) for m in re.finditer(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", data)]


def first_response(data: bytes, method: str = "GET") -> RawResponse | None:
    return parse_raw_response(data, method) if data else None


# -- the data directory --------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def unexpected_files(data_dir: Path) -> list[str]:
    """Files under ``data_dir`` outside its layout: ``blobs/<algorithm>/<2 hex>/<hex>`` (content
    addressing, ARCHITECTURE.md invariant 1), ``uploads/``, ``tmp/``, ``locks/`` and ``metadata.db*``."""
    bad: list[str] = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_dir():
            continue
        parts = path.relative_to(data_dir).parts
        top = parts[0]
        if len(parts) == 1 and re.fullmatch(r"metadata\.db(-wal|-shm|-journal)?", top):
            continue
        if top == "blobs" and len(parts) == 4:
            algorithm, prefix, name = parts[1:]
            length = DIGEST_HEX_LENGTHS.get(algorithm)
            if length and _HEX.fullmatch(name) and len(name) == length and name[:2] == prefix:
                continue
        if top == "uploads":
            continue
        if top in ("locks", "tmp") and len(parts) == 2 and _SAFE_NAME.fullmatch(parts[1]):
            continue
        bad.append("/".join(parts))
    return bad


def blob_files(data_dir: Path, digest: str) -> list[Path]:
    """Every file under ``blobs/`` named by ``digest``'s hex (one is right; two are a copy)."""
    algorithm, _, hex_ = digest.partition(":")
    return [p for p in (data_dir / "blobs" / algorithm).rglob(hex_) if p.is_file()]


def run_fsck(data_dir: Path) -> tuple[int, dict[str, Any]]:
    """``dockyard fsck --data-dir D --json``: its exit code and report."""
    result = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
    )
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"fsck printed no JSON: {result.stdout!r} {result.stderr!r}") from exc
    return result.returncode, report


# What aiohttp's HTTP parser raises on bytes that are not HTTP: answered 400 by aiohttp itself.
_PROTOCOL_ERRORS = ("BadHttpMessage", "BadHttpMethod", "BadStatusLine", "LineTooLong", "InvalidHeader")


@dataclass
class LoggedError:
    line: str
    exception: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.line} | {self.exception}"

    @property
    def startup_journal_race(self) -> bool:
        """A worker that died opening the database at start (``PRAGMA journal_mode=WAL`` was busy)."""
        return "journal_mode" in self.traceback and "lifecycle" in self.traceback


def logged_errors(log: str) -> list[LoggedError]:
    """Every error the server logged, with its traceback, except aiohttp's HTTP parse errors."""
    found: list[LoggedError] = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " not in line and " CRITICAL " not in line:
            continue
        exception, body = "", []
        for follow in lines[i + 1 : i + 400]:
            if re.match(r"\d{4}-\d{2}-\d{2} ", follow):
                break
            body.append(follow)
            if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Message|Method|Line|Header)\b", follow):
                exception = follow
        if any(name in exception for name in _PROTOCOL_ERRORS):
            continue
        found.append(LoggedError(line, exception, "\n".join(body)))
    return found


def server_errors(log: str, *, ignore_startup_race: bool = False) -> list[str]:
    """``logged_errors`` as lines; ``ignore_startup_race`` leaves out the start-up race (own test)."""
    return [str(e) for e in logged_errors(log) if not (ignore_startup_race and e.startup_journal_race)]
