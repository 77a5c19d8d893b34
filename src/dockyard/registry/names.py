"""Repository names, tags and references (spec: "Pulling manifests")."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from dockyard.registry import errors
from dockyard.registry.digests import Digest

_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255


@functools.lru_cache(maxsize=4096)  # every request parses its name: the same few, over and over
def parse_name(text: str) -> str:
    """A repository name that matches the spec's expression; it never holds `..` or `/` at an end."""
    if len(text) > MAX_NAME_LENGTH or not _NAME.fullmatch(text):
        raise errors.RegistryError(
            errors.NAME_INVALID, detail={"name": text[:300]}, message="invalid repository name"
        )
    return text


def is_tag(text: str) -> bool:
    return bool(_TAG.fullmatch(text))


def parse_tag(text: str) -> str:
    if not is_tag(text):
        raise errors.RegistryError(errors.REFERENCE_INVALID, message=f"invalid tag {text[:140]!r}")
    return text


@dataclass(frozen=True)
class Reference:
    """A manifest reference: a tag or a digest, never both."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if Digest.is_digest(text):
            return cls(digest=Digest.parse(text))  # DIGEST_INVALID when malformed
        return cls(tag=parse_tag(text))

    @classmethod
    def lookup(cls, text: str) -> Reference:
        """A reference to read or delete by. A name that cannot be a tag can never have been
        pushed, so it names an unknown manifest (404), not a bad request: only a push is told
        its tag is invalid. A malformed digest stays ``DIGEST_INVALID``."""
        return _lookup(text)

    def __str__(self) -> str:
        return str(self.digest) if self.digest else str(self.tag)


@functools.lru_cache(maxsize=4096)  # a pull reads the same few references over and over
def _lookup(text: str) -> Reference:
    """``Reference.lookup``, remembered (a ``Reference`` is immutable; errors are not kept)."""
    if not Digest.is_digest(text) and not is_tag(text):
        raise errors.RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": text[:140]})
    return Reference.parse(text)
