"""Digests (spec: "Content Digests"; image-spec descriptor.md "Digests")."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from dockyard.registry import errors

# Registered algorithms: name -> length of the hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM = "sha256"

# image-spec grammar: algorithm ":" encoded
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Validate a digest string; registered algorithms only, lowercase hex of the right length."""
        if len(text) > 256 or not _GRAMMAR.fullmatch(text):
            raise errors.RegistryError(errors.DIGEST_INVALID, message=f"invalid digest {text[:80]!r}")
        algorithm, encoded = text.split(":", 1)
        expected = ALGORITHMS.get(algorithm)
        if expected is None:
            raise errors.RegistryError(
                errors.DIGEST_INVALID, message=f"unsupported digest algorithm {algorithm!r}"
            )
        if len(encoded) != expected or not all(c in "0123456789abcdef" for c in encoded):
            raise errors.RegistryError(
                errors.DIGEST_INVALID,
                message=f"{algorithm} digest must be {expected} lowercase hex characters",
            )
        return cls(algorithm, encoded)

    @classmethod
    def trusted(cls, text: str) -> Digest:
        """A digest read back from our own store, validated when it went in: no re-check."""
        algorithm, _, encoded = text.partition(":")
        return cls(algorithm, encoded)

    @classmethod
    def is_digest(cls, text: str) -> bool:
        return ":" in text

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        h = new_hasher(algorithm)
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise errors.RegistryError(
            errors.DIGEST_INVALID, message=f"unsupported digest algorithm {algorithm[:40]!r}"
        )
    return algorithm


def new_hasher(algorithm: str) -> Hasher:
    return hashlib.new(check_algorithm(algorithm))
