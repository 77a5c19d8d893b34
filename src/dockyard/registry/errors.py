"""The one table of protocol errors (spec: "Error Codes").

Every error the registry can report is declared here once, with its HTTP status and a
default message; the rest of the code raises it by name. The HTTP layer renders any
``RegistryError`` as the spec's JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = ErrorCode(
    "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"
)
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED = ErrorCode("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
# The spec allows only the codes above; these name the other conditions with the nearest
# spec code and their own status and message.
RANGE_NOT_SATISFIABLE = ErrorCode("SIZE_INVALID", 416, "requested range not satisfiable")
UPLOAD_RANGE_INVALID = ErrorCode(
    "BLOB_UPLOAD_INVALID", 416, "chunk does not start where the upload session ends"
)
MANIFEST_TOO_LARGE = ErrorCode("SIZE_INVALID", 413, "manifest exceeds the size limit")
REFERENCE_INVALID = ErrorCode("MANIFEST_INVALID", 400, "invalid tag or digest")
PAGINATION_INVALID = ErrorCode("UNSUPPORTED", 400, "invalid number of results requested")
INSUFFICIENT_STORAGE = ErrorCode("BLOB_UPLOAD_INVALID", 507, "the registry's storage has no space left")
BODY_TIMEOUT = ErrorCode("BLOB_UPLOAD_INVALID", 408, "the request body stalled")
INTERNAL = ErrorCode("UNKNOWN", 500, "internal error; the request was not carried out")
UPLOAD_LIMIT = ErrorCode("TOOMANYREQUESTS", 429, "too many open upload sessions")
# Pull-through cache: the upstream could not answer and nothing is cached here (503, the client
# may retry), or it sent content that fails verification (502); and a cache takes no pushes.
UPSTREAM_MANIFEST_UNAVAILABLE = ErrorCode(
    "MANIFEST_UNKNOWN", 503, "the upstream registry cannot be reached and the manifest is not cached"
)
UPSTREAM_BLOB_UNAVAILABLE = ErrorCode(
    "BLOB_UNKNOWN", 503, "the upstream registry cannot be reached and the blob is not cached"
)
UPSTREAM_MANIFEST_INVALID = ErrorCode(
    "MANIFEST_INVALID", 502, "the upstream registry sent an invalid manifest"
)
UPSTREAM_DIGEST_INVALID = ErrorCode(
    "DIGEST_INVALID", 502, "the upstream registry sent content that does not match its digest"
)
READ_ONLY = ErrorCode(
    "UNSUPPORTED", 405, "this registry is a pull-through cache: it takes no pushes or deletes"
)
# A part underneath (the metadata database, the object store, the data disk) is failing: not the
# client's mistake and not our bug. Distribution's precedent: code UNAVAILABLE, status 503.
UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "a service the registry depends on is unavailable")

#: what a 503 for a failing dependency asks clients to wait before they try again
RETRY_AFTER_SECONDS = 5


@dataclass
class RegistryError(Exception):
    """A protocol error: what went wrong, said in the spec's words."""

    error: ErrorCode
    detail: Any = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message or self.error.message)

    @property
    def status(self) -> int:
        return self.error.status

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "code": self.error.code,
            "message": self.message or self.error.message,
        }
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class DependencyUnavailable(RegistryError):
    """A dependency failed the request: unreachable, shutting down, starting, timing out,
    throttling, or answering with its own server error. Raised by the adapters (never for the
    client's mistakes, never for a full disk: that is 507); the client gets ``503`` with
    ``Retry-After`` and may simply try again. ``dependency`` names the part ("database",
    "object store", "storage"); what it said goes to the log, not to the client.
    """

    def __init__(self, dependency: str, cause: str = "") -> None:
        super().__init__(
            UNAVAILABLE,
            detail={"dependency": dependency},
            message=f"the {dependency} is unavailable; try again later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        self.dependency = dependency
        self.cause = cause

    def __str__(self) -> str:
        return f"the {self.dependency} is unavailable: {self.cause}" if self.cause else str(self.message)
