"""What the access-control tests share: users, rules, a test PKI, servers per auth mode, clients.

Every server here reads the same users (an htpasswd file with bcrypt ``$2y$`` entries) and the
same rules, so a test can say "bob may not push to private/..." whatever the mode:

- ``private/**``: alice pulls, pushes, deletes; carol pulls (group ``readers``).
- ``team/**``: the ``devs`` group (alice, bob) pulls, pushes, deletes.
- ``public/**``: anyone pulls (``*``), alice pushes.
- ``anon/*``: anonymous clients pull (one path component only).
- ``members/**``: any authenticated user pulls.
- ``root`` is an admin: everything, everywhere.

This module is imported by ``tests/auth`` and by ``tests/interop/test_auth_clients.py``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import ssl
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.api_helpers import assert_error, no_server_errors
from tests.support.server import DockyardServer

PASSWORDS = {
    "alice": "alice-pw-Qx7f3a",
    "bob": "bob-pw-Kd91c2",
    "carol": "carol-pw-Zr5d0e",
    "root": "root-pw-Vm4c4b8",
}
USERS = tuple(PASSWORDS)
ADMINS = ["root"]
GROUPS = {"devs": ["alice", "bob"], "readers": ["carol"]}
ACCESS: list[dict[str, Any]] = [
    {"repository": "private/**", "pull": ["alice", "group:readers"], "push": ["alice"], "delete": ["alice"]},
    {"repository": "team/**", "pull": ["group:devs"], "push": ["group:devs"], "delete": ["group:devs"]},
    {"repository": "public/**", "pull": ["*"], "push": ["alice"]},
    {"repository": "anon/*", "pull": ["anonymous"]},
    {"repository": "members/**", "pull": ["authenticated"]},
]
# The repository prefixes each user (None: anonymous) may pull, by the rules above.
READABLE: dict[str | None, tuple[str, ...]] = {
    None: ("public/", "anon/"),
    "alice": ("private/", "team/", "public/", "members/"),
    "bob": ("team/", "public/", "members/"),
    "carol": ("private/", "public/", "members/"),
}
SERVICE = "dockyard"
# What the challenge's scope asks for, per action (push needs pull too, as in Distribution).
SCOPE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}


def unique(prefix: str) -> str:
    """A fresh repository under ``prefix`` (``private``, ``team``...), 12 hex digits long."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@cache
def _hash(user: str, password: str) -> str:
    # The format `htpasswd -B` writes: $2y$, which is bcrypt's $2b$ under another name.
    return "$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()[4:]


def write_htpasswd(path: Path, users: Iterable[str] = USERS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{user}:{_hash(user, PASSWORDS[user])}\n" for user in users))


# -- WWW-Authenticate ---------------------------------------------------------------------------

_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    scheme, _, rest = header.partition(" ")
    return Challenge(scheme.lower(), dict(_PARAM.findall(rest)))


# -- a test PKI ------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1, client certificates (CN = user) and, for
    contrast, client certificates for alice that must not pass: ``rogue`` (another CA's) and
    ``expired`` (the test CA's, expired yesterday). All PEM files in ``folder``."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client_cert(self, user: str) -> tuple[Path, Path]:
        return self.folder / "clients" / f"{user}.cert", self.folder / "clients" / f"{user}.key"

    def context(self, user: str | None = None) -> ssl.SSLContext:
        """What a client needs: trust in the test CA, and ``user``'s certificate if given."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if user is not None:
            cert, key = self.client_cert(user)
            context.load_cert_chain(cert, key)
        return context

    def cert_dir(self, user: str | None = None) -> Path:
        """A containers/image ``--cert-dir``: ``ca.crt``, plus ``<user>.cert``/``.key`` if given."""
        folder = self.folder / f"certs.d-{user or 'ca'}"
        folder.mkdir(exist_ok=True)
        (folder / "ca.crt").write_bytes(self.ca.read_bytes())
        if user is not None:
            cert, key = self.client_cert(user)
            (folder / f"{user}.cert").write_bytes(cert.read_bytes())
            (folder / f"{user}.key").write_bytes(key.read_bytes())
        return folder

    @classmethod
    def create(cls, folder: Path, users: Iterable[str] = USERS) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "clients").mkdir(exist_ok=True)
        ca_key, ca_cert = _ca("dockyard test CA")
        (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        server_key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        server = _leaf(ca_key, ca_cert, "127.0.0.1", server_key, ExtendedKeyUsageOID.SERVER_AUTH, san)
        (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
        (folder / "server.key").write_bytes(_pem_key(server_key))
        for user in users:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _leaf(ca_key, ca_cert, user, key, ExtendedKeyUsageOID.CLIENT_AUTH)
            (folder / "clients" / f"{user}.cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (folder / "clients" / f"{user}.key").write_bytes(_pem_key(key))
        rogue_key, rogue_ca = _ca("rogue CA")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(rogue_key, rogue_ca, "alice", key, ExtendedKeyUsageOID.CLIENT_AUTH)
        (folder / "clients" / "rogue.cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "clients" / "rogue.key").write_bytes(_pem_key(key))
        key = ec.generate_private_key(ec.SECP256R1())
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        cert = _leaf(ca_key, ca_cert, "alice", key, ExtendedKeyUsageOID.CLIENT_AUTH, until=yesterday)
        (folder / "clients" / "expired.cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "clients" / "expired.key").write_bytes(_pem_key(key))
        return cls(folder)


def _validity(
    builder: x509.CertificateBuilder, until: datetime.datetime | None = None
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    until = until or now + datetime.timedelta(days=2)
    return builder.not_valid_before(until - datetime.timedelta(days=3)).not_valid_after(until)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return key, builder.sign(key, hashes.SHA256())


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None = None,
    until: datetime.datetime | None = None,
) -> x509.Certificate:
    builder = _validity(
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number()),
        until,
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# -- servers ---------------------------------------------------------------------------------------


def auth_config(mode: str, **auth: Any) -> dict[str, Any]:
    """The ``auth`` section for ``mode`` with this module's users, groups and rules."""
    return {
        "mode": mode,
        "admins": ADMINS,
        "groups": GROUPS,
        "access": ACCESS,
        "max_failed_logins": 1000,  # tests of the limit set their own
        **auth,
    }


def start_auth_server(
    data_dir: Path,
    mode: str,
    *,
    pki: Pki | None = None,
    client_ca: bool = False,
    workers: int = 1,
    env: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    **auth: Any,
) -> DockyardServer:
    """A ``dockyard serve`` in ``mode`` (users and rules above) from a YAML ``--config``; over
    TLS when ``pki`` is given (the certificate by ``--tls-cert``/``--tls-key``), with
    ``tls_client_ca`` when ``client_ca`` (always for mtls)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    write_htpasswd(data_dir / "auth" / "htpasswd")
    config: dict[str, Any] = {"auth": auth_config(mode, **auth), **(settings or {})}
    extra_args: list[str] = []
    verify: Any = True
    scheme = "http"
    if pki is not None:
        scheme = "https"
        extra_args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        if client_ca or mode == "mtls":
            config["tls_client_ca"] = str(pki.ca)
        verify = pki.context("root" if mode == "mtls" else None)
    config_file = data_dir.parent / f"{data_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    server = DockyardServer(
        data_dir=data_dir,
        workers=workers,
        env=env or {},
        extra_args=["--config", str(config_file), *extra_args],
        scheme=scheme,
        verify=verify,
        ready_statuses=(200, 401),
    )
    return server.start()


# -- clients -----------------------------------------------------------------------------------------


class BearerFlow(httpx.Auth):
    """The Docker token flow, as docker and containers/image do it: send the last token; on a
    ``Bearer`` challenge, get a token for its scope from its realm (with Basic credentials, or
    anonymously), adding ``pull`` on the source repository of a cross-repository mount, and send
    the request again."""

    def __init__(self, user: str | None = None, password: str | None = None) -> None:
        self.user = user
        self.password = password if password is not None else PASSWORDS.get(user or "")
        self.last_token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.last_token is not None:
            request.headers["Authorization"] = f"Bearer {self.last_token}"
        response = yield request
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if response.status_code != 401 or challenge.scheme != "bearer":
            return
        scopes = [challenge.params["scope"]] if "scope" in challenge.params else []
        source = request.url.params.get("from")
        if source:
            scopes.append(f"repository:{source}:pull")
        params = [("service", challenge.params["service"]), *(("scope", s) for s in scopes)]
        headers = {}
        if self.user is not None and self.password is not None:
            headers["Authorization"] = basic_header(self.user, self.password)
        token_response = yield httpx.Request("GET", challenge.params["realm"], params=params, headers=headers)
        if token_response.status_code != 200:
            return
        token_response.read()
        self.last_token = token_response.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.last_token}"
        yield request


def mode_client(server: DockyardServer, mode: str, user: str | None, pki: Pki | None = None) -> httpx.Client:
    """A client of ``server`` acting as ``user`` (None: anonymous) the way ``mode`` expects:
    Basic credentials, the token flow, or a client certificate (mtls)."""
    auth: Any = None
    verify: Any = pki.context() if pki is not None else True
    if mode == "basic" and user is not None:
        auth = httpx.BasicAuth(user, PASSWORDS[user])
    elif mode == "token":
        auth = BearerFlow(user)
    elif mode == "mtls":
        assert pki is not None
        verify = pki.context(user)
    return httpx.Client(
        base_url=server.url,
        auth=auth,
        verify=verify,
        timeout=30.0,
        event_hooks={"response": [no_server_errors]},
    )


# -- what a refusal looks like -------------------------------------------------------------------


def assert_challenge(
    response: httpx.Response, mode: str, scope: str | None, error: str | None = None, realm: str | None = None
) -> None:
    """401 UNAUTHORIZED (no body for HEAD) with the mode's ``WWW-Authenticate``; in token mode
    the realm is ``realm``, by default this server's ``/auth/token``."""
    if response.request.method == "HEAD":
        assert response.status_code == 401, response.status_code
    else:
        assert_error(response, 401, "UNAUTHORIZED")
    challenge = parse_challenge(response.headers.get("www-authenticate", ""))
    if mode in ("basic", "mtls"):
        assert response.headers["www-authenticate"] == 'Basic realm="dockyard"'
        return
    assert challenge.scheme == "bearer", response.headers.get("www-authenticate")
    base = str(response.request.url.copy_with(path="/", query=None, fragment=None)).rstrip("/")
    assert challenge.params["realm"] == (realm or f"{base}/auth/token"), challenge
    assert challenge.params["service"] == SERVICE, challenge
    assert challenge.params.get("scope") == scope, challenge
    assert challenge.params.get("error") == error, challenge


def assert_denied(response: httpx.Response, mode: str, repository: str, action: str) -> None:
    """An authenticated client without the right: 403 DENIED, or in token mode a 401 whose
    challenge says ``insufficient_scope`` and names the scope needed."""
    if mode == "token":
        scope = f"repository:{repository}:{SCOPE_ACTIONS[action]}"
        assert_challenge(response, mode, scope, error="insufficient_scope")
    elif response.request.method == "HEAD":
        assert response.status_code == 403, response.status_code
    else:
        assert_error(response, 403, "DENIED")


def comparable(response: httpx.Response, name: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (without Date) and body, with the repository name replaced."""
    headers = {k: v.replace(name, "<name>") for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, headers, response.content.replace(name.encode(), b"<name>")


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def dockyard_cli(*args: str, check: bool = True, process: bool = False, timeout: float = 60) -> CliResult:
    """``dockyard ARGS...`` (``user add``, ``user list``...): the click command run in this
    process (a fresh interpreter costs a second or two), or with ``process`` the real program."""
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "dockyard", *args], capture_output=True, text=True, timeout=timeout
        )
        result = CliResult(done.returncode, done.stdout, done.stderr)
    else:
        from click.testing import CliRunner

        from dockyard.cli import main

        invoked = CliRunner().invoke(main, list(args))
        result = CliResult(invoked.exit_code, invoked.stdout, invoked.stderr)
    if check:
        assert result.returncode == 0, (args, result)
    return result
