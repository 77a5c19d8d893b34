"""One registry, spoken to over HTTP: authentication, Locations, redirects, back-off.

The client rules this module keeps (spec: "Pushing blobs", "Pulling blobs"; Docker token auth):

- a ``Location`` is resolved against the URL of the request that returned it, so relative and
  absolute Locations both work, and the caller always sends its next request to the latest one;
- redirects are followed by hand: ``Authorization`` goes only to the registry's own origin, never
  to the host a blob ``GET`` is redirected to (an object store's pre-signed URL);
- ``401`` with ``Basic`` → the user's credentials; with ``Bearer realm=…,service=…,scope=…`` →
  a token from the realm (Basic credentials or anonymous; OAuth2 ``POST`` if ``GET`` is not
  served), cached per scope until shortly before it expires, fetched ahead of bodies so a large
  chunk is never sent only to be refused;
- a request with a body has an idle watchdog: it fails when no byte moved for ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from dockyard.client.reference import ImageReference

Body = bytes | Callable[[], AsyncIterator[bytes]] | None
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What ends a request without an answer: the connection, a timeout, a broken payload.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryError(Exception):
    """The registry said no (a status the caller cannot go on from), in the registry's words."""

    def __init__(self, status: int, message: str, url: str = "", code: str | None = None) -> None:
        super().__init__(f"{status} {code + ': ' if code else ''}{message}" + (f" ({url})" if url else ""))
        self.status = status
        self.code = code
        self.message = message


# What a retry loop handles: no answer at all, or an answer it may be able to go on from.
FAULTS = (aiohttp.ClientError, TimeoutError, ConnectionError, RegistryError)


@dataclass
class ClientOptions:
    """How to reach registries: credentials, TLS, timeouts, retries."""

    username: str | None = None
    password: str | None = None
    plain_http: bool = False
    ca_cert: Path | None = None
    insecure: bool = False  # TLS without verifying the server's certificate
    client_cert: Path | None = None
    client_key: Path | None = None
    connect_timeout: float = 30.0
    idle_timeout: float = 60.0  # no byte sent or received for this long: the request failed
    retries: int = 8  # attempts in a row without progress before giving up
    busy_wait: float = 150.0  # how long to wait for a session an earlier, dead request still holds
    backoff_base: float = 0.5
    backoff_max: float = 15.0
    user_agent: str = "dockyard-client"

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure and self.client_cert is None:
            return False
        context = ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
        return context


@dataclass
class Answer:
    """A response read whole (small bodies only: errors, manifests, JSON)."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    url: URL

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> RegistryError:
        return error_from(self.status, self.body, str(self.url))


def error_from(status: int, body: bytes, url: str) -> RegistryError:
    """The spec's error body, if there is one, as a RegistryError."""
    code = None
    message = body[:300].decode(errors="replace").strip() or "no message"
    with contextlib.suppress(ValueError, AttributeError, IndexError, KeyError, TypeError):
        first = json.loads(body)["errors"][0]
        code, message = str(first.get("code")), str(first.get("message") or message)
    return RegistryError(status, message, url, code)


@dataclass
class Challenge:
    scheme: str  # "basic" or "bearer", lower-case
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        params = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with full jitter (attempt 1, 2, 3...)."""
    return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


class Registry:
    """A connection pool to one registry, with its credentials and tokens."""

    def __init__(self, base_url: str, options: ClientOptions | None = None) -> None:
        self.base = URL(base_url.rstrip("/"))
        self.options = options or ClientOptions()
        self._session: aiohttp.ClientSession | None = None
        self._challenge: Challenge | None = None
        self._pinged = False
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_lock = asyncio.Lock()
        self.single_post: bool | None = None  # learned: does POST ?digest= take the whole blob

    @classmethod
    def for_reference(cls, ref: ImageReference, options: ClientOptions | None = None) -> Registry:
        options = options or ClientOptions()
        return cls(ref.base_url(options.plain_http), options)

    @property
    def host(self) -> str:
        return f"{self.base.host}:{self.base.port}" if self.base.explicit_port else str(self.base.host)

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.options.connect_timeout, sock_read=self.options.idle_timeout
            )
            connector = aiohttp.TCPConnector(ssl=self.options.ssl_context(), limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers={"User-Agent": self.options.user_agent},
                auto_decompress=False,
            )
        return self._session

    def url(self, path: str) -> URL:
        return self.base.join(URL(path))

    @staticmethod
    def resolve(current: URL, location: str) -> URL:
        """A ``Location`` (absolute, or relative to the request that returned it) as a URL."""
        return current.join(URL(location, encoded=True))

    # -- authentication -------------------------------------------------------------------------

    def _same_origin(self, url: URL) -> bool:
        return url.origin() == self.base.origin()

    def _basic(self) -> str | None:
        if self.options.username is None:
            return None
        pair = f"{self.options.username}:{self.options.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def ping(self) -> Answer:
        """``GET /v2/``: is it a registry, and which authentication does it ask for."""
        self._pinged = True
        answer = await self.call("GET", self.url("/v2/"), scopes=[], ok=(200, 401))
        return answer

    async def authorization(self, scopes: Iterable[str]) -> str | None:
        """The Authorization header for a request needing ``scopes`` (None: send none)."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic()
        if challenge.scheme == "bearer":
            token = await self._token(sorted(set(scopes)))
            return f"Bearer {token}" if token else None
        return None

    async def _token(self, scopes: list[str], refresh: bool = False) -> str | None:
        assert self._challenge is not None
        key = " ".join(scopes)
        async with self._token_lock:
            cached = self._tokens.get(key)
            if cached is not None and not refresh and cached[1] > time.monotonic():
                return cached[0]
            token, ttl = await self._fetch_token(self._challenge.params, scopes)
            # Renew well before expiry: a chunk must not be refused halfway through a push.
            self._tokens[key] = (token, time.monotonic() + max(5.0, ttl * 0.8 - 10))
            return token

    async def _fetch_token(self, params: dict[str, str], scopes: list[str]) -> tuple[str, float]:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(401, "the Bearer challenge names no realm", str(self.base))
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        headers = {}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
        async with self.session.get(URL(realm).with_query(query), headers=headers) as response:
            body = await response.read()
            status = response.status
        if status in (404, 405) and self.options.username is not None:
            form = {
                "grant_type": "password",
                "username": self.options.username,
                "password": self.options.password or "",
                "service": params.get("service", ""),
                "scope": " ".join(scopes),
                "client_id": self.options.user_agent,
            }
            async with self.session.post(realm, data=form) as response:
                body = await response.read()
                status = response.status
        if status != 200:
            raise error_from(status, body, realm)
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str):
            raise RegistryError(status, "the token endpoint answered without a token", realm)
        expires_in = doc.get("expires_in")
        return token, float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 60.0

    def _learn(self, header: str | None, scopes: list[str], had: str | None) -> bool:
        """Take a 401's challenge; True if the request is worth sending again."""
        if not header:
            return False
        challenge = Challenge.parse(header)
        if challenge.scheme == "basic":
            self._challenge = challenge
            return self.options.username is not None and had != self._basic()
        if challenge.scheme == "bearer":
            first = self._challenge is None or self._challenge.params.get("realm") != challenge.params.get(
                "realm"
            )
            self._challenge = challenge
            if challenge.params.get("scope"):
                extra = challenge.params["scope"]
                if extra not in scopes:
                    scopes.append(extra)
                    return True
            # A token we had may have expired early, or the realm is new: one fresh try.
            if first or had is not None:
                self._tokens.pop(" ".join(sorted(set(scopes))), None)
                return had is None or challenge.params.get("error") != "insufficient_scope"
            return False
        return False

    # -- requests -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        url: URL,
        *,
        scopes: list[str],
        headers: dict[str, str] | None = None,
        body: Body = None,
        follow_redirects: bool = False,
        on_progress: Callable[[int], None] | None = None,
        expect_continue: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request (authenticating, following redirects when asked) and yield the response.

        ``body`` is bytes or a factory of an async byte stream (called again for a retry after a
        401). ``on_progress`` hears how many body bytes went out.
        """
        if not self._pinged and self._challenge is None:
            with contextlib.suppress(*TRANSPORT_ERRORS, RegistryError):
                await self.ping()
        scopes = list(scopes)
        for attempt in range(3):
            hop = url
            had = await self.authorization(scopes) if self._same_origin(hop) else None
            send_headers = dict(headers or {})
            if had:
                send_headers["Authorization"] = had
            response = await self._send(method, hop, send_headers, body, on_progress, expect_continue)
            for _ in range(10):
                if not (follow_redirects and response.status in REDIRECTS and "Location" in response.headers):
                    break
                hop = self.resolve(hop, response.headers["Location"])
                response.release()
                hop_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
                if self._same_origin(hop) and had:
                    hop_headers["Authorization"] = had
                response = await self._send(
                    method if method in ("GET", "HEAD") else "GET", hop, hop_headers, None, None
                )
            if response.status == 401 and attempt < 2 and self._same_origin(hop):
                await response.read()
                if self._learn(response.headers.get("WWW-Authenticate"), scopes, had):
                    response.release()
                    continue
            try:
                yield response
            finally:
                response.release()
            return

    async def _send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: Body,
        on_progress: Callable[[int], None] | None,
        expect_continue: bool = False,
    ) -> aiohttp.ClientResponse:
        idle = self.options.idle_timeout
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(idle) as watchdog:
            data: Any = None
            if isinstance(body, bytes):
                data = body
                if on_progress is not None and body:
                    on_progress(len(body))
            elif body is not None:

                def alive() -> None:
                    with contextlib.suppress(RuntimeError):  # the answer came before the body ended
                        watchdog.reschedule(loop.time() + idle)

                data = _watched(body(), alive, on_progress)
            return await self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                chunked=None,
                expect100=expect_continue,
            )

    async def send_to_store(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: Body,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[int, bytes]:
        """One request to a URL the registry handed out (a pre-signed object-store URL): never
        with the registry's credentials, no redirects; the status and the (small) answer."""
        response = await self._send(method, url, headers, body, on_progress)
        try:
            return response.status, await response.content.read(64 * 1024)
        finally:
            response.release()

    async def call(
        self,
        method: str,
        url: URL,
        *,
        scopes: list[str],
        headers: dict[str, str] | None = None,
        body: Body = None,
        ok: Iterable[int] = (200, 201, 202, 204),
        follow_redirects: bool = False,
        limit: int = 16 * 1024 * 1024,
    ) -> Answer:
        """One request, its (small) response read whole; a status not in ``ok`` raises."""
        async with self.open(
            method, url, scopes=scopes, headers=headers, body=body, follow_redirects=follow_redirects
        ) as response:
            length = response.content_length
            if method != "HEAD" and length is not None and length > limit:
                raise RegistryError(response.status, f"answer of {length} bytes is too large", str(url))
            data = await response.read() if method != "HEAD" else b""
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.headers.items()}, data, response.url
            )
        if answer.status not in set(ok):
            raise answer.error()
        return answer

    async def retrying(self, what: str, action: Callable[[], Any]) -> Any:
        """``await action()`` again after a transport error or a 5xx/429, with back-off."""
        for attempt in range(1, self.options.retries + 1):
            try:
                return await action()
            except TRANSPORT_ERRORS:
                if attempt == self.options.retries:
                    raise
            except RegistryError as exc:
                if not (exc.status >= 500 or exc.status in (408, 429)) or attempt == self.options.retries:
                    raise
            await asyncio.sleep(backoff_delay(attempt, self.options.backoff_base, self.options.backoff_max))
        raise AssertionError(what)  # pragma: no cover


async def _watched(
    stream: AsyncIterator[bytes], alive: Callable[[], None], on_progress: Callable[[int], None] | None
) -> AsyncIterator[bytes]:
    """``stream``, telling the idle watchdog (and the progress) each time a piece goes out."""
    async for data in stream:
        alive()
        yield data
        if on_progress is not None:
            on_progress(len(data))
