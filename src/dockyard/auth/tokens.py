"""Docker token authentication: issuing and checking signed JWTs (ES256 or RS256).

Claims follow Distribution's "Token Authentication Implementation": ``iss``, ``sub``, ``aud``
(the service), ``exp``, ``nbf``, ``iat``, ``jti`` and ``access`` — a list of
``{"type", "name", "actions"}`` grants. Refresh tokens are JWTs of the same issuer with
``"typ": "refresh"`` and no access.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockyard.config import AuthSettings

# jwt and cryptography (~10 MiB a process) are imported where a token is made or checked, so a
# worker of a registry without token auth never loads them.

ALGORITHMS = ["ES256", "RS256"]  # never "none" or HMAC: a public key must not become a secret
LEEWAY_SECONDS = 10


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class Grant:
    type: str
    name: str
    actions: frozenset[str]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(scope: str) -> Grant | None:
    """``repository:<name>:pull,push`` (or ``registry:catalog:*``); None when malformed."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    kind = kind.split("(", 1)[0]  # "repository(plugin)" resource classes
    return Grant(kind, name, frozenset(a for a in actions.split(",") if a))


@dataclass(frozen=True)
class Claims:
    subject: str | None
    grants: tuple[Grant, ...]

    def allows(self, kind: str, name: str, action: str) -> bool:
        return any(
            g.type == kind and g.name == name and (action in g.actions or "*" in g.actions)
            for g in self.grants
        )


def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(digest[i : i + 4] for i in range(0, 48, 4))  # Distribution's libtrust style


def load_or_create_key(path: Path, algorithm: str) -> Any:
    """The signing key; created on first use (atomically, so concurrent workers agree)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if not path.exists():
        if algorithm == "ES256":
            key: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # the first worker wins; the others load its key
        tmp.unlink()
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    if b"CERTIFICATE" in data:
        from cryptography import x509

        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


class TokenAuthority:
    """Signs tokens with this registry's key; verifies its own and trusted issuers' tokens."""

    def __init__(self, settings: AuthSettings, data_dir: Path) -> None:
        import jwt

        self.settings = settings
        self.service = settings.token_service
        self.issuer = settings.token_issuer
        self.algorithm = settings.token_algorithm
        self._key = load_or_create_key(
            settings.token_key or data_dir / "auth" / "token-key.pem", self.algorithm
        )
        self.key_id = _key_id(self._key.public_key())
        # issuer -> (key id or None -> public key)
        self._trusted: dict[str, dict[str | None, Any]] = {self.issuer: {self.key_id: self._key.public_key()}}
        for trusted in settings.trusted_issuers:
            keys = self._trusted.setdefault(trusted.issuer, {})
            if trusted.public_key is not None:
                keys[None] = _load_public_key(trusted.public_key)
            if trusted.jwks is not None:
                for jwk in json.loads(trusted.jwks.read_text()).get("keys", []):
                    keys[jwk.get("kid")] = jwt.PyJWK(jwk).key

    def _sign(self, claims: dict[str, Any]) -> str:
        import jwt

        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.key_id})

    def issue(self, subject: str | None, grants: list[Grant]) -> tuple[str, int, float]:
        now = time.time()
        ttl = self.settings.token_ttl_seconds
        claims = {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now) - LEEWAY_SECONDS,
            "exp": int(now) + ttl,
            "jti": uuid.uuid4().hex,
            "access": [g.claim() for g in grants],
        }
        return self._sign(claims), ttl, now

    def issue_refresh(self, subject: str) -> str:
        now = int(time.time())
        return self._sign(
            {
                "iss": self.issuer,
                "sub": subject,
                "aud": self.service,
                "iat": now,
                "nbf": now - LEEWAY_SECONDS,
                "exp": now + self.settings.refresh_token_ttl_seconds,
                "jti": uuid.uuid4().hex,
                "typ": "refresh",
            }
        )

    def _decode(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        keys = self._trusted.get(str(unverified.get("iss")))
        if keys is None:
            raise InvalidToken("token from an unknown issuer")
        key = keys.get(header.get("kid")) or keys.get(None)
        if key is None:
            raise InvalidToken("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.service,
                issuer=unverified.get("iss"),
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        return claims

    def verify(self, token: str) -> Claims:
        claims = self._decode(token)
        if claims.get("typ") == "refresh":
            raise InvalidToken("a refresh token is not an access token")
        grants = []
        for entry in claims.get("access") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                actions = entry.get("actions") or []
                grants.append(Grant(str(entry.get("type")), entry["name"], frozenset(map(str, actions))))
        return Claims(claims.get("sub") or None, tuple(grants))

    def verify_refresh(self, token: str) -> str:
        claims = self._decode(token)
        if claims.get("typ") != "refresh" or claims.get("iss") != self.issuer or not claims.get("sub"):
            raise InvalidToken("not a refresh token of this registry")
        return str(claims["sub"])
