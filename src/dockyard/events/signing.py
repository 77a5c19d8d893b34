"""The signature over an event's body that a receiver checks (HMAC-SHA256 with the sink's secret)."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Dockyard-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The header value: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header.strip())
