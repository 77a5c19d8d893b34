"""Docker token authentication: the token endpoint (GET and the OAuth2 POST), what a token
grants, and every way a token can be wrong (forged, expired, for another audience or issuer,
unsigned, HMAC'd with the public key); tokens from trusted external issuers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.auth.support import (
    PASSWORDS,
    SERVICE,
    BearerFlow,
    assert_challenge,
    dockyard_cli,
    parse_challenge,
    start_auth_server,
    unique,
)
from tests.support.api_helpers import assert_error, push_blob, push_image
from tests.support.server import DockyardServer

Grants = set[tuple[str, str, frozenset[str]]]


def get_token(
    server: DockyardServer, user: str | None, scopes: list[str], password: str | None = None, **params: str
) -> httpx.Response:
    auth = None if user is None else (user, password if password is not None else PASSWORDS[user])
    query = [("service", SERVICE), *(("scope", s) for s in scopes), *params.items()]
    return httpx.get(f"{server.url}/auth/token", params=query, auth=auth, timeout=30.0)


def token_for(server: DockyardServer, user: str | None, *scopes: str) -> str:
    response = get_token(server, user, list(scopes))
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def post_token(server: DockyardServer, **form: str) -> httpx.Response:
    return httpx.post(f"{server.url}/auth/token", data={"service": SERVICE, **form}, timeout=30.0)


def grants(token: str) -> Grants:
    claims = jwt.decode(token, options={"verify_signature": False})
    return {(g["type"], g["name"], frozenset(g["actions"])) for g in claims["access"]}


def bearer(server: DockyardServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)


def assert_invalid_token(response: httpx.Response, server: DockyardServer, realm: str | None = None) -> None:
    assert_error(response, 401, "UNAUTHORIZED")
    challenge = parse_challenge(response.headers["www-authenticate"])
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == (realm or f"{server.url}/auth/token")
    assert challenge.params["service"] == SERVICE
    assert challenge.params["error"] == "invalid_token", challenge


@pytest.fixture(scope="module")
def team_repo(token_server: DockyardServer) -> str:
    """A repository with one image, for tokens to be tried on."""
    repo = unique("team")
    with httpx.Client(base_url=token_server.url, auth=BearerFlow("root"), timeout=30.0) as root:
        push_image(root, repo, "v1", seed=repo)
    return repo


# -- the token endpoint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "alice", "bob", "carol", "root"])
def test_token_grants_the_intersection_of_requested_and_allowed(
    token_server: DockyardServer, user: str | None
) -> None:
    repos = {prefix: unique(prefix) for prefix in ("private", "team", "public", "anon", "members")}
    requested = [
        f"repository:{repos['private']}:pull,push,delete",
        f"repository:{repos['team']}:pull,push",
        f"repository:{repos['public']}:pull,push,delete",
        f"repository:{repos['anon']}:pull",
        f"repository:{repos['members']}:pull,push,frobnicate",
        "registry:catalog:*",
        "repository:malformed",
    ]
    every, pull, pull_push = (
        frozenset({"pull", "push", "delete"}),
        frozenset({"pull"}),
        frozenset({"pull", "push"}),
    )
    allowed: dict[str | None, dict[str, frozenset[str]]] = {
        None: {"public": pull, "anon": pull},
        "alice": {"private": every, "team": pull_push, "public": pull_push, "members": pull},
        "bob": {"team": pull_push, "public": pull, "members": pull},
        "carol": {"private": pull, "public": pull, "members": pull},
        "root": {"private": every, "team": pull_push, "public": every, "anon": pull, "members": pull_push},
    }
    expected: Grants = {("repository", repos[p], actions) for p, actions in allowed[user].items()}
    if user is not None:
        expected.add(("registry", "catalog", frozenset({"*"})))

    response = get_token(token_server, user, requested)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert grants(answer["token"]) == expected
    scope = {tuple(s.rsplit(":", 1)) for s in answer["scope"].split()}
    assert scope == {(f"{kind}:{name}", ",".join(sorted(actions))) for kind, name, actions in expected}


def test_token_claims_and_answer(token_server: DockyardServer) -> None:
    before = int(time.time())
    response = get_token(token_server, "alice", ["repository:team/x:pull"])
    answer = response.json()
    token = answer["token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})

    assert answer["access_token"] == token
    assert answer["expires_in"] == 300
    issued = datetime.strptime(answer["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert before - 1 <= issued <= time.time() + 1
    assert "refresh_token" not in answer
    assert header["alg"] == "ES256" and header["kid"]
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("dockyard", SERVICE, "alice")
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] <= claims["iat"] <= time.time() + 1
    assert (
        claims["jti"]
        != jwt.decode(token_for(token_server, "alice"), options={"verify_signature": False})["jti"]
    )
    # It verifies with the key dockyard keeps in its data directory.
    public = serialization.load_pem_private_key(server_key_path(token_server).read_bytes(), None).public_key()
    jwt.decode(token, public, algorithms=["ES256"], audience=SERVICE, issuer="dockyard")


def test_token_endpoint_refuses_wrong_credentials_with_a_basic_challenge(
    token_server: DockyardServer,
) -> None:
    """RFC 6749 5.2: credentials sent with Basic that fail get 401 and a Basic challenge."""
    for user, password in [("alice", "wrong"), ("mallory", "whatever")]:
        response = get_token(token_server, user, ["repository:team/x:pull"], password=password)
        assert_error(response, 401, "UNAUTHORIZED")
        assert parse_challenge(response.headers.get("www-authenticate", "")).scheme == "basic", (
            response.headers
        )


def test_token_endpoint_refuses_another_service(token_server: DockyardServer) -> None:
    response = httpx.get(
        f"{token_server.url}/auth/token",
        params={"service": "someone-else", "scope": "repository:team/x:pull"},
        auth=("alice", PASSWORDS["alice"]),
    )
    assert response.status_code == 400
    assert "token" not in response.json()


def test_a_token_opens_only_its_own_scope(token_server: DockyardServer, team_repo: str) -> None:
    other = unique("team")
    pull_only = token_for(token_server, "alice", f"repository:{team_repo}:pull")

    with bearer(token_server, pull_only) as client:
        assert client.get("/v2/").status_code == 200
        assert client.get(f"/v2/{team_repo}/manifests/v1").status_code == 200
        assert_challenge(
            client.post(f"/v2/{team_repo}/blobs/uploads/"),
            "token",
            f"repository:{team_repo}:pull,push",
            error="insufficient_scope",
        )
        assert_challenge(
            client.delete(f"/v2/{team_repo}/manifests/v1"),
            "token",
            f"repository:{team_repo}:delete",
            error="insufficient_scope",
        )
        # alice may push the other repository, but this token does not say so.
        assert_challenge(
            client.get(f"/v2/{other}/tags/list"),
            "token",
            f"repository:{other}:pull",
            error="insufficient_scope",
        )


def test_catalog_with_a_token_without_the_catalog_scope_is_insufficient_scope(
    token_server: DockyardServer, team_repo: str
) -> None:
    token = token_for(token_server, "alice", f"repository:{team_repo}:pull")
    with bearer(token_server, token) as client:
        response = client.get("/v2/_catalog")
    assert_challenge(response, "token", "registry:catalog:*", error="insufficient_scope")


def test_a_token_passes_in_every_worker(token_server: DockyardServer, team_repo: str) -> None:
    """The server runs two workers; each request here comes on a new connection."""
    token = token_for(token_server, "bob", f"repository:{team_repo}:pull")
    for _ in range(16):
        response = httpx.get(
            f"{token_server.url}/v2/{team_repo}/tags/list",
            headers={"Authorization": f"Bearer {token}", "Connection": "close"},
        )
        assert response.status_code == 200, response.text


# -- OAuth2 POST: password and refresh-token grants ---------------------------------------------------


def test_password_grant_then_refresh_token_grant(token_server: DockyardServer, team_repo: str) -> None:
    scope = f"repository:{team_repo}:pull,push repository:{unique('private')}:pull"

    plain = post_token(
        token_server, grant_type="password", username="bob", password=PASSWORDS["bob"], scope=scope
    )
    assert plain.status_code == 200, plain.text
    assert "refresh_token" not in plain.json()
    assert grants(plain.json()["access_token"]) == {("repository", team_repo, frozenset({"pull", "push"}))}

    offline = post_token(
        token_server,
        grant_type="password",
        username="bob",
        password=PASSWORDS["bob"],
        scope=scope,
        client_id="dockyard-tests",
        access_type="offline",
    )
    assert offline.status_code == 200, offline.text
    refresh = offline.json()["refresh_token"]

    renewed = post_token(
        token_server, grant_type="refresh_token", refresh_token=refresh, scope=f"repository:{team_repo}:pull"
    )
    assert renewed.status_code == 200, renewed.text
    access = renewed.json()["access_token"]
    assert grants(access) == {("repository", team_repo, frozenset({"pull"}))}
    assert jwt.decode(access, options={"verify_signature": False})["sub"] == "bob"
    with bearer(token_server, access) as client:
        assert client.get(f"/v2/{team_repo}/tags/list").status_code == 200


def test_password_grant_with_a_wrong_password_is_refused(token_server: DockyardServer) -> None:
    response = post_token(token_server, grant_type="password", username="bob", password="nope", scope="")
    assert response.status_code == 401
    assert "access_token" not in response.json()


def test_a_refresh_token_is_not_an_access_token(token_server: DockyardServer, team_repo: str) -> None:
    offline = get_token(token_server, "alice", [f"repository:{team_repo}:pull"], offline_token="true")
    refresh = offline.json()["refresh_token"]

    with bearer(token_server, refresh) as client:
        assert_invalid_token(client.get(f"/v2/{team_repo}/tags/list"), token_server)
        assert_invalid_token(client.get("/v2/"), token_server)


def test_an_access_token_is_not_a_refresh_token(token_server: DockyardServer) -> None:
    access = token_for(token_server, "alice", "repository:team/x:pull")
    response = post_token(token_server, grant_type="refresh_token", refresh_token=access, scope="")
    assert response.status_code == 401
    assert "access_token" not in response.json()


def test_a_removed_users_refresh_token_and_password_are_refused(token_server: DockyardServer) -> None:
    name, password = f"temp-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    dockyard_cli("user", "add", name, "--password", password, "--data-dir", str(token_server.data_dir))
    offline = post_token(
        token_server, grant_type="password", username=name, password=password, access_type="offline", scope=""
    )
    assert offline.status_code == 200, offline.text
    refresh = offline.json()["refresh_token"]
    assert post_token(token_server, grant_type="refresh_token", refresh_token=refresh).status_code == 200

    dockyard_cli("user", "remove", name, "--data-dir", str(token_server.data_dir))

    assert post_token(token_server, grant_type="refresh_token", refresh_token=refresh).status_code == 401
    assert (
        post_token(token_server, grant_type="password", username=name, password=password).status_code == 401
    )


def test_unknown_grant_type_is_refused(token_server: DockyardServer) -> None:
    response = post_token(token_server, grant_type="client_credentials", client_id="x", client_secret="y")
    assert response.status_code == 400
    assert "access_token" not in response.json()


# -- forged and broken tokens ---------------------------------------------------------------------------


def server_key_path(server: DockyardServer) -> Path:
    return server.data_dir / "auth" / "token-key.pem"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Forge:
    """What a forger has: the server's real key (for tokens wrong in other ways), its kid, a repo."""

    key: Any
    kid: str
    repo: str

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "dockyard",
            "sub": "alice",
            "aud": SERVICE,
            "iat": now,
            "nbf": now - 10,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "access": [{"type": "repository", "name": self.repo, "actions": ["pull"]}],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], key: Any = None, headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(
            claims, key or self.key, algorithm="ES256", headers={"kid": self.kid, **(headers or {})}
        )

    def raw(self, header: dict[str, Any], claims: dict[str, Any], signature: Callable[[bytes], bytes]) -> str:
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64url(signature(signing_input.encode()))}"


def _hs256_with_public_key(forge: Forge) -> str:
    public_pem = forge.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return forge.raw(
        {"alg": "HS256", "typ": "JWT", "kid": forge.kid},
        forge.claims(),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )


def _tampered(forge: Forge) -> str:
    header, _, signature = forge.sign(forge.claims()).split(".")
    widened = forge.claims(access=[{"type": "repository", "name": forge.repo, "actions": ["pull", "push"]}])
    return f"{header}.{b64url(json.dumps(widened).encode())}.{signature}"


FORGERIES: dict[str, Callable[[Forge], str]] = {
    "signed by another key": lambda f: f.sign(f.claims(), key=ec.generate_private_key(ec.SECP256R1())),
    "signed by another key, no kid": lambda f: jwt.encode(
        f.claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"
    ),
    "expired": lambda f: f.sign(f.claims(iat=int(time.time()) - 600, nbf=None, exp=int(time.time()) - 60)),
    "not yet valid": lambda f: f.sign(f.claims(nbf=int(time.time()) + 120, exp=int(time.time()) + 600)),
    "without exp": lambda f: f.sign(f.claims(exp=None)),
    "wrong audience": lambda f: f.sign(f.claims(aud="another-registry")),
    "without audience": lambda f: f.sign(f.claims(aud=None)),
    "wrong issuer": lambda f: f.sign(f.claims(iss="https://evil.example")),
    "alg none": lambda f: f.raw({"alg": "none", "typ": "JWT", "kid": f.kid}, f.claims(), lambda _: b""),
    "HS256 keyed with the public key": _hs256_with_public_key,
    "payload tampered": _tampered,
    "not a JWT": lambda f: "not-a-token",
    "two segments": lambda f: ".".join(f.sign(f.claims()).split(".")[:2]),
}


@pytest.fixture(scope="module")
def forge(token_server: DockyardServer, team_repo: str) -> Forge:
    kid = jwt.get_unverified_header(token_for(token_server, "alice"))["kid"]
    key = serialization.load_pem_private_key(server_key_path(token_server).read_bytes(), None)
    return Forge(key, kid, team_repo)


def test_a_token_made_with_the_servers_key_passes(token_server: DockyardServer, forge: Forge) -> None:
    """The control for the forgeries below: made the same way, but right."""
    with bearer(token_server, forge.sign(forge.claims())) as client:
        assert client.get(f"/v2/{forge.repo}/tags/list").status_code == 200


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_bad_token_is_refused(token_server: DockyardServer, forge: Forge, forgery: str) -> None:
    token = FORGERIES[forgery](forge)
    with bearer(token_server, token) as client:
        assert_invalid_token(client.get(f"/v2/{forge.repo}/tags/list"), token_server)
        assert_invalid_token(client.get("/v2/"), token_server)
        assert_invalid_token(client.post(f"/v2/{forge.repo}/blobs/uploads/"), token_server)


def test_a_grant_names_one_repository_exactly(token_server: DockyardServer, forge: Forge) -> None:
    """Names in a token's access claim are names, not patterns; types must match too."""
    scope = f"repository:{forge.repo}:pull"
    for kind, name in [
        ("repository", "team/*"),
        ("repository", "**"),
        ("repository", "*"),
        ("repository", forge.repo.upper()),
        ("registry", forge.repo),
    ]:
        token = forge.sign(forge.claims(access=[{"type": kind, "name": name, "actions": ["pull", "*"]}]))
        with bearer(token_server, token) as client:
            response = client.get(f"/v2/{forge.repo}/tags/list")
        assert_challenge(response, "token", scope, error="insufficient_scope")


def _refresh_claims(forge: Forge, **overrides: Any) -> dict[str, Any]:
    return forge.claims(access=None, typ="refresh", **overrides)


REFRESH_FORGERIES: dict[str, Callable[[Forge], str]] = {
    "signed by another key": lambda f: f.sign(
        _refresh_claims(f), key=ec.generate_private_key(ec.SECP256R1())
    ),
    "expired": lambda f: f.sign(_refresh_claims(f, iat=int(time.time()) - 900, exp=int(time.time()) - 60)),
    "wrong audience": lambda f: f.sign(_refresh_claims(f, aud="another-registry")),
    "without subject": lambda f: f.sign(_refresh_claims(f, sub=None)),
    "for a user who does not exist": lambda f: f.sign(_refresh_claims(f, sub="mallory")),
    "not marked refresh": lambda f: f.sign(f.claims()),
}


def test_a_refresh_token_made_with_the_servers_key_passes(token_server: DockyardServer, forge: Forge) -> None:
    response = post_token(
        token_server, grant_type="refresh_token", refresh_token=forge.sign(_refresh_claims(forge))
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("forgery", sorted(REFRESH_FORGERIES))
def test_a_bad_refresh_token_is_refused(token_server: DockyardServer, forge: Forge, forgery: str) -> None:
    token = REFRESH_FORGERIES[forgery](forge)
    response = post_token(
        token_server, grant_type="refresh_token", refresh_token=token, scope=f"repository:{forge.repo}:pull"
    )
    assert response.status_code == 401, response.text
    assert "access_token" not in response.json()


# -- trusted external issuers -----------------------------------------------------------------------------

PEM_ISSUER = "https://issuer.example/pem"
CERT_ISSUER = "https://issuer.example/cert"
JWKS_ISSUER = "https://issuer.example/jwks"
EXTERNAL_REALM = "https://issuer.example/token"


@dataclass(frozen=True)
class Issuer:
    name: str
    key: Any
    algorithm: str
    kid: str | None

    def token(self, subject: str, grants: list[dict[str, Any]], **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.name,
            "sub": subject,
            "aud": SERVICE,
            "iat": now,
            "exp": now + 120,
            "access": grants,
        }
        claims.update(overrides)
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)


@dataclass(frozen=True)
class Issuers:
    """The external issuers' keys, and the folder with their public keys and JWKS."""

    folder: Path
    by_name: dict[str, Issuer]

    def __getitem__(self, name: str) -> Issuer:
        return self.by_name[name]


@pytest.fixture(scope="module")
def issuers(tmp_path_factory: pytest.TempPathFactory) -> Issuers:
    folder = tmp_path_factory.mktemp("issuers")
    pem_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "pem.pub").write_bytes(
        pem_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "issuer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(cert_key.public_key())
        .serial_number(1)
        .not_valid_before(now.replace(year=now.year - 1))
        .not_valid_after(now.replace(year=now.year + 1))
        .sign(cert_key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    jwks_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_ec = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {
            **jwt.algorithms.RSAAlgorithm.to_jwk(jwks_rsa.public_key(), as_dict=True),
            "kid": "rsa-1",
            "use": "sig",
        },
        {
            **jwt.algorithms.ECAlgorithm.to_jwk(jwks_ec.public_key(), as_dict=True),
            "kid": "ec-1",
            "use": "sig",
        },
    ]
    (folder / "jwks.json").write_text(json.dumps({"keys": keys}))
    return Issuers(
        folder,
        {
            "pem": Issuer(PEM_ISSUER, pem_key, "ES256", None),
            "cert": Issuer(CERT_ISSUER, cert_key, "RS256", "anything"),
            "jwks-rsa": Issuer(JWKS_ISSUER, jwks_rsa, "RS256", "rsa-1"),
            "jwks-ec": Issuer(JWKS_ISSUER, jwks_ec, "ES256", "ec-1"),
        },
    )


@pytest.fixture(scope="module")
def trusting_server(tmp_path_factory: pytest.TempPathFactory, issuers: Issuers) -> Iterator[DockyardServer]:
    folder = issuers.folder
    server = start_auth_server(
        tmp_path_factory.mktemp("trusting") / "data",
        "token",
        trusted_issuers=[
            {"issuer": PEM_ISSUER, "public_key": str(folder / "pem.pub")},
            {"issuer": CERT_ISSUER, "public_key": str(folder / "cert.pem")},
            {"issuer": JWKS_ISSUER, "jwks": str(folder / "jwks.json")},
        ],
        token_realm=EXTERNAL_REALM,
    )
    yield server
    server.stop()


def test_the_challenge_names_the_configured_realm(trusting_server: DockyardServer) -> None:
    response = httpx.get(f"{trusting_server.url}/v2/team/x/tags/list")
    assert_error(response, 401, "UNAUTHORIZED")
    challenge = parse_challenge(response.headers["www-authenticate"])
    assert challenge.params == {
        "realm": EXTERNAL_REALM,
        "service": SERVICE,
        "scope": "repository:team/x:pull",
    }


def _push_grant(repo: str) -> list[dict[str, Any]]:
    return [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]


@pytest.mark.parametrize("issuer", ["pem", "cert", "jwks-rsa", "jwks-ec"])
def test_a_token_from_a_trusted_issuer_is_accepted(
    trusting_server: DockyardServer, issuers: Issuers, issuer: str
) -> None:
    repo = unique("team")
    token = issuers[issuer].token("alice", _push_grant(repo))

    with bearer(trusting_server, token) as client:
        digest = push_blob(client, repo, f"pushed with a token of {issuer}".encode())
        assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
        # Its grants are what it says, no more.
        assert_challenge(
            client.delete(f"/v2/{repo}/blobs/{digest}"),
            "token",
            f"repository:{repo}:delete",
            "insufficient_scope",
            realm=EXTERNAL_REALM,
        )


@pytest.mark.parametrize(
    "case",
    [
        "pem issuer, another key",
        "jwks issuer, unknown kid",
        "jwks issuer, known kid, another key",
        "jwks issuer, no kid",
        "pem issuer, wrong audience",
        "pem issuer, expired",
        "claims dockyard's own issuer",
        "issuer nobody trusts",
    ],
)
def test_a_token_a_trusted_issuer_did_not_sign_is_refused(
    trusting_server: DockyardServer, issuers: Issuers, case: str
) -> None:
    repo = unique("team")
    grant = _push_grant(repo)
    other_ec = ec.generate_private_key(ec.SECP256R1())
    pem, jwks = issuers["pem"], issuers["jwks-ec"]
    now = int(time.time())
    token = {
        "pem issuer, another key": lambda: Issuer(PEM_ISSUER, other_ec, "ES256", None).token("alice", grant),
        "jwks issuer, unknown kid": lambda: Issuer(JWKS_ISSUER, jwks.key, "ES256", "ec-2").token(
            "alice", grant
        ),
        "jwks issuer, known kid, another key": lambda: Issuer(JWKS_ISSUER, other_ec, "ES256", "ec-1").token(
            "alice", grant
        ),
        "jwks issuer, no kid": lambda: Issuer(JWKS_ISSUER, jwks.key, "ES256", None).token("alice", grant),
        "pem issuer, wrong audience": lambda: pem.token("alice", grant, aud="another-registry"),
        "pem issuer, expired": lambda: pem.token("alice", grant, iat=now - 600, exp=now - 60),
        "claims dockyard's own issuer": lambda: pem.token("alice", grant, iss="dockyard"),
        "issuer nobody trusts": lambda: Issuer("https://evil.example", other_ec, "ES256", None).token(
            "alice", grant
        ),
    }[case]()

    with bearer(trusting_server, token) as client:
        assert_invalid_token(client.post(f"/v2/{repo}/blobs/uploads/"), trusting_server, EXTERNAL_REALM)


def test_a_trusted_issuers_token_is_no_refresh_token_here(
    trusting_server: DockyardServer, issuers: Issuers
) -> None:
    token = issuers["pem"].token("alice", [], typ="refresh")
    response = post_token(trusting_server, grant_type="refresh_token", refresh_token=token)
    assert response.status_code == 401
    assert "access_token" not in response.json()


def test_dockyards_own_tokens_still_pass_beside_trusted_issuers(trusting_server: DockyardServer) -> None:
    repo = unique("team")
    token = token_for(trusting_server, "bob", f"repository:{repo}:pull,push")
    with bearer(trusting_server, token) as client:
        digest = push_blob(client, repo, b"pushed by bob")
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == b"pushed by bob"
