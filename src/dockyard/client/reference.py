"""Image references as users type them: ``[http[s]://]host[:port]/repository[:tag][@digest]``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dockyard.registry.digests import Digest
from dockyard.registry.errors import RegistryError as _CoreError
from dockyard.registry.names import is_tag, parse_name


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1`` (``host`` without its port)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host_port(host: str) -> tuple[str, int | None]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


@dataclass(frozen=True)
class ImageReference:
    """Where an image lives: a registry host, a repository, and a tag and/or a digest."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    scheme: str | None = None  # "http" or "https" when the user wrote one

    @classmethod
    def parse(cls, text: str, *, need_repository: bool = True) -> ImageReference:
        """Parse ``text``; ValueError says what is wrong. The host is never guessed (no Docker Hub)."""
        scheme: str | None = None
        rest = text.strip()
        for prefix in ("http://", "https://"):
            if rest.lower().startswith(prefix):
                scheme, rest = prefix[:-3], rest[len(prefix) :]
        host, _, path = rest.partition("/")
        if not host:
            raise ValueError(f"{text!r}: no registry host")
        if not path:
            if need_repository:
                raise ValueError(f"{text!r}: expected HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]")
            return cls(host=host, repository="", scheme=scheme)
        digest: str | None = None
        if "@" in path:
            path, _, digest = path.partition("@")
            try:
                digest = str(Digest.parse(digest))
            except _CoreError as exc:
                raise ValueError(f"{text!r}: {exc}") from None
        tag: str | None = None
        name, sep, maybe_tag = path.rpartition(":")
        if sep and "/" not in maybe_tag:
            if not is_tag(maybe_tag):
                raise ValueError(f"{text!r}: invalid tag {maybe_tag!r}")
            path, tag = name, maybe_tag
        try:
            repository = parse_name(path)
        except _CoreError:
            raise ValueError(f"{text!r}: invalid repository name {path!r}") from None
        return cls(host=host, repository=repository, tag=tag, digest=digest, scheme=scheme)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    def with_reference(self, *, tag: str | None = None, digest: str | None = None) -> ImageReference:
        return ImageReference(self.host, self.repository, tag, digest, self.scheme)

    def base_url(self, plain_http: bool = False) -> str:
        """``scheme://host``: the scheme written, else http with ``plain_http`` or on loopback."""
        scheme = self.scheme or (
            "http" if plain_http or is_loopback(split_host_port(self.host)[0]) else "https"
        )
        return f"{scheme}://{self.host}"

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
