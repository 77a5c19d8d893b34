"""Access control over HTTP: the challenge, credentials, per-route scopes and the token endpoint.

Modes (``auth.mode``): ``none``; ``basic`` (htpasswd, bcrypt); ``token`` (Docker token
authentication: clients fetch a JWT from ``/auth/token`` or an external issuer and send it as
``Bearer``); ``mtls`` (a client certificate signed by ``tls_client_ca`` is required; its CN is
the user). In basic and token modes a valid client certificate also authenticates.

Every check happens before the handler runs, so a private repository that does not exist gets
the same answer as one that does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from dockyard.auth.access import AccessPolicy, Identity
from dockyard.auth.htpasswd import Htpasswd
from dockyard.auth.tokens import Claims, Grant, InvalidToken, TokenAuthority, parse_scope
from dockyard.http.common import REGISTRY, json_response
from dockyard.http.errors import Handler
from dockyard.registry import errors

if TYPE_CHECKING:
    from dockyard.config import Settings

log = logging.getLogger("dockyard.auth")

FAILED_LOGIN_WINDOW = 60.0


class LoginFailures(Protocol):
    """Where failed logins are counted (the metadata store: shared by workers and nodes)."""

    async def record_login_failure(self, keys: list[str]) -> None: ...

    async def login_retry_after(self, keys: list[str], limit: int, window: float) -> float | None: ...


IDENTITY = "dockyard.identity"
CLAIMS = "dockyard.claims"

# What each route needs: None (any authenticated client), "catalog", "public", or an action on
# the route's repository. Set by the app factory from its route table.
ROUTE_ACCESS = web.AppKey("route_access", dict)
# The routes browsers use (the HTML pages). A browser cannot follow the token flow, so there
# Basic credentials are accepted in every password mode and every challenge is Basic.
BROWSER_ROUTES = web.AppKey("browser_routes", frozenset)


@dataclass(frozen=True)
class Credentials:
    identity: Identity | None
    claims: Claims | None


class Guard:
    """Authenticates requests and decides what they may do."""

    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.mode = auth.mode
        self.settings = auth
        self.policy = AccessPolicy(auth)
        self.htpasswd = Htpasswd(auth.htpasswd or settings.data_dir / "auth" / "htpasswd")
        self.tokens = TokenAuthority(auth, settings.data_dir) if auth.mode == "token" else None
        self.max_failed_logins = auth.max_failed_logins
        self.failures: LoginFailures | None = None  # the metadata store, set by install()
        self._clear_until: dict[str, float] = {}  # keys with no recent failures, until when

    # -- who is it ------------------------------------------------------------------------------

    async def check_password(
        self, request: web.Request, user: str, password: str, basic_challenge: bool = False
    ) -> Identity:
        """A user name and password from htpasswd. Failed attempts are counted per client address
        and per user in the metadata store, so the limit holds across workers and nodes; a
        password verified a moment ago skips bcrypt and the count."""
        keys = [f"addr:{request.remote}", f"user:{user}"]
        wait = await self._retry_after(keys)
        if wait is not None:
            raise errors.RegistryError(
                errors.TOOMANYREQUESTS,
                message="too many failed logins; try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        if not (
            self.htpasswd.known_fast(user, password)
            or await asyncio.to_thread(self.htpasswd.verify, user, password)
        ):
            assert self.failures is not None
            await self.failures.record_login_failure(keys)
            self._clear_until.clear()
            log.warning("failed login from %s", request.remote)
            raise self.unauthorized(request, None, "invalid username or password", basic=basic_challenge)
        return self.policy.identify(user, "password")

    async def _retry_after(self, keys: list[str]) -> float | None:
        """The shared count, asked at most once a second per client and user while clean."""
        now = time.monotonic()
        if all(self._clear_until.get(k, 0.0) > now for k in keys):
            return None
        assert self.failures is not None
        wait = await self.failures.login_retry_after(keys, self.max_failed_logins, FAILED_LOGIN_WINDOW)
        if wait is None:
            if len(self._clear_until) > 100_000:
                self._clear_until.clear()
            for k in keys:
                self._clear_until[k] = now + 1.0
        return wait

    def certificate_identity(self, request: web.Request) -> Identity | None:
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return self.policy.identify(str(value), "certificate")
        return None

    async def authenticate(self, request: web.Request, browser: bool = False) -> Credentials:
        """Who sent the request. ``browser``: Basic credentials count in token mode too, checked
        against htpasswd as the token endpoint checks them, so the same user gets the same rights."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and (self.mode in ("basic", "mtls") or browser):
            parsed = _basic(value)
            if parsed is None:
                raise self.unauthorized(request, None, "malformed Basic credentials", basic=browser)
            return Credentials(await self.check_password(request, *parsed, basic_challenge=browser), None)
        if scheme == "bearer" and self.tokens is not None:
            try:
                claims = self.tokens.verify(value.strip())
            except InvalidToken as exc:
                log.info("refused a token from %s: %s", request.remote, exc)
                raise self.unauthorized(request, None, "invalid token", error="invalid_token") from None
            identity = self.policy.identify(claims.subject, "token") if claims.subject else None
            return Credentials(identity, claims)
        return Credentials(self.certificate_identity(request), None)

    # -- may it -----------------------------------------------------------------------------------

    def may(self, credentials: Credentials, repository: str, action: str) -> bool:
        if credentials.claims is not None:
            return credentials.claims.allows("repository", repository, action)
        return action in self.policy.actions(credentials.identity, repository)

    def may_list_catalog(self, credentials: Credentials) -> bool:
        if credentials.claims is not None:
            return credentials.claims.allows("registry", "catalog", "*")
        return credentials.identity is not None

    # -- saying no --------------------------------------------------------------------------------

    def challenge(
        self, request: web.Request, scope: str | None, error: str | None = None, basic: bool = False
    ) -> str:
        if self.mode == "token" and not basic:
            realm = self.settings.token_realm or f"{request.scheme}://{request.host}/auth/token"
            parts = [f'realm="{realm}"', f'service="{self.settings.token_service}"']
            if scope:
                parts.append(f'scope="{scope}"')
            if error:
                parts.append(f'error="{error}"')
            return "Bearer " + ",".join(parts)
        return f'Basic realm="{self.settings.realm}"'

    def unauthorized(
        self,
        request: web.Request,
        scope: str | None,
        message: str,
        error: str | None = None,
        basic: bool = False,
    ) -> errors.RegistryError:
        """401 with the challenge the client must answer (Basic at the token endpoint)."""
        return errors.RegistryError(
            errors.UNAUTHORIZED,
            message=message,
            headers={"WWW-Authenticate": self.challenge(request, scope, error, basic)},
        )


def _basic(value: str) -> tuple[str, str] | None:
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


GUARD = web.AppKey("guard", Guard)


def credentials(request: web.Request) -> Credentials:
    found = request.get(CLAIMS)
    return found if isinstance(found, Credentials) else Credentials(None, None)


def owner(request: web.Request) -> str | None:
    """Whose upload session this request may use (sessions are not transferable)."""
    identity = credentials(request).identity
    return identity.name if identity is not None else None


def may_pull(request: web.Request, repository: str) -> bool:
    guard = request.app.get(GUARD)
    return guard is None or guard.may(credentials(request), repository, "pull")


def readable(request: web.Request) -> Callable[[str], bool] | None:
    """For the catalog and mounts without ``from``: may this client pull that repository?
    (By the access rules for the client's identity; a token's subject counts as that user.)"""
    guard = request.app.get(GUARD)
    if guard is None:
        return None
    identity = credentials(request).identity
    return lambda repository: "pull" in guard.policy.actions(identity, repository)


def may_operate(request: web.Request) -> bool:
    """For the operations page: without access control, anyone who reaches the registry; with
    it, an authenticated administrator (``auth.admins``; with no access rules at all, every
    authenticated user, who may do everything anyway)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return True
    identity = credentials(request).identity
    return identity is not None and guard.policy.is_admin(identity)


def may_see_totals(request: web.Request) -> bool:
    """The registry-wide totals are what ``/metrics`` shows: to any authenticated client, or
    to anyone where there is no access control."""
    guard = request.app.get(GUARD)
    if guard is None:
        return True
    creds = credentials(request)
    return creds.identity is not None or creds.claims is not None


_SCOPE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app.get(GUARD)
    route = request.match_info.route
    access = request.app[ROUTE_ACCESS].get(route, "public") if guard is not None else "public"
    if access == "public":
        return await handler(request)
    assert guard is not None
    browser = route in request.app.get(BROWSER_ROUTES, frozenset())
    creds = await guard.authenticate(request, browser)
    request[CLAIMS] = creds
    authenticated = creds.identity is not None or creds.claims is not None
    if access == "metrics" or access is None:  # operators: any authenticated client
        if not authenticated:
            raise guard.unauthorized(request, None, "authentication required", basic=browser)
    elif access == "admin":  # the operations page
        if not authenticated:
            raise guard.unauthorized(request, None, "authentication required", basic=browser)
        if not may_operate(request):
            raise errors.RegistryError(errors.DENIED, message="administrators only")
    elif access == "catalog":
        if not guard.may_list_catalog(creds):
            error = "insufficient_scope" if creds.claims is not None else None
            raise guard.unauthorized(
                request, "registry:catalog:*", "authentication required", error=error, basic=browser
            )
    else:
        name = request.match_info.get("name", "")
        if not guard.may(creds, name, access):
            scope = f"repository:{name}:{_SCOPE_ACTIONS[access]}"
            if (guard.mode == "token" and not browser) or not authenticated:
                error = "insufficient_scope" if creds.claims is not None else None
                raise guard.unauthorized(
                    request, scope, "authentication required", error=error, basic=browser
                )
            raise errors.RegistryError(
                errors.DENIED, detail=[{"Type": "repository", "Name": name, "Action": access}]
            )
    return await handler(request)


# -- the token endpoint (GET and the OAuth2 POST) ------------------------------------------------


def _grants(guard: Guard, identity: Identity | None, scopes: list[str]) -> list[Grant]:
    grants: list[Grant] = []
    for scope in scopes:
        wanted = parse_scope(scope)
        if wanted is None:
            continue
        if wanted.type == "repository":
            allowed = guard.policy.actions(identity, wanted.name)
            actions = wanted.actions & allowed
        elif wanted.type == "registry" and wanted.name == "catalog" and identity is not None:
            actions = wanted.actions & {"*"}
        else:
            actions = frozenset()
        if actions:
            grants.append(Grant(wanted.type, wanted.name, actions))
    return grants


def _token_answer(
    guard: Guard, identity: Identity | None, scopes: list[str], refresh: bool
) -> dict[str, Any]:
    assert guard.tokens is not None
    grants = _grants(guard, identity, scopes)
    token, ttl, issued = guard.tokens.issue(identity.name if identity else None, grants)
    answer: dict[str, Any] = {
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": datetime.fromtimestamp(issued, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": " ".join(f"{g.type}:{g.name}:{','.join(sorted(g.actions))}" for g in grants),
    }
    if refresh and identity is not None:
        answer["refresh_token"] = guard.tokens.issue_refresh(identity.name)
    return answer


def _check_service(guard: Guard, service: str | None) -> None:
    if service and service != guard.settings.token_service:
        raise errors.RegistryError(
            errors.ErrorCode("UNSUPPORTED", 400, "unknown service"), detail={"service": service[:100]}
        )


async def token_get(request: web.Request) -> web.Response:
    """``GET /auth/token?service=…&scope=…``, with Basic credentials or none (anonymous)."""
    guard = request.app[GUARD]
    _check_service(guard, request.query.get("service"))
    identity = None
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        parsed = _basic(header[6:])
        if parsed is None:
            raise guard.unauthorized(request, None, "malformed Basic credentials", basic=True)
        identity = await guard.check_password(request, *parsed, basic_challenge=True)
    scopes = request.query.getall("scope", [])
    refresh = request.query.get("offline_token", "").lower() == "true"
    return json_response(
        _token_answer(guard, identity, scopes, refresh), headers={"Cache-Control": "no-store"}
    )


async def token_post(request: web.Request) -> web.Response:
    """OAuth2 ``POST /auth/token``: grant_type ``password`` or ``refresh_token``."""
    guard = request.app[GUARD]
    assert guard.tokens is not None
    form = await request.post()
    _check_service(guard, str(form.get("service", "")))
    grant_type = str(form.get("grant_type", ""))
    if grant_type == "password":
        identity = await guard.check_password(
            request, str(form.get("username", "")), str(form.get("password", "")), basic_challenge=True
        )
    elif grant_type == "refresh_token":
        try:
            subject = guard.tokens.verify_refresh(str(form.get("refresh_token", "")))
        except InvalidToken as exc:
            raise errors.RegistryError(errors.UNAUTHORIZED, message=f"invalid refresh token: {exc}") from None
        if subject not in guard.htpasswd.users():
            raise errors.RegistryError(errors.UNAUTHORIZED, message="the user no longer exists")
        identity = guard.policy.identify(subject, "token")
    else:
        raise errors.RegistryError(
            errors.ErrorCode("UNSUPPORTED", 400, "unsupported grant_type"),
            detail={"grant_type": grant_type[:40]},
        )
    scopes = str(form.get("scope", "")).split()
    refresh = grant_type == "refresh_token" or str(form.get("access_type", "")) == "offline"
    answer = _token_answer(guard, identity, scopes, refresh)
    if grant_type == "refresh_token":
        answer["refresh_token"] = str(form.get("refresh_token"))
    return json_response(answer, headers={"Cache-Control": "no-store"})


def install(app: web.Application, settings: Settings) -> None:
    """Put access control in front of ``app`` (nothing at all when the mode is ``none``)."""
    if settings.auth.mode == "none":
        return
    guard = Guard(settings)
    guard.failures = app[REGISTRY].meta
    app[GUARD] = guard
    if guard.tokens is not None and settings.auth.issue_tokens:
        app.router.add_get("/auth/token", token_get)
        app.router.add_post("/auth/token", token_post)
    log.info("access control: %s (users in %s)", settings.auth.mode, Path(guard.htpasswd.path))
