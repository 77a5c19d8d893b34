"""HTTP sinks: each event POSTed as one CloudEvents 1.0 JSON document (structured mode)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import aiohttp

from dockyard import __version__
from dockyard.events import EVENT_TYPES
from dockyard.events.signing import SIGNATURE_HEADER, sign
from dockyard.metadata.outbox import Delivery

if TYPE_CHECKING:
    from dockyard.config import EventSink

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
DEFAULT_TYPES = frozenset(t for t in EVENT_TYPES if t != "manifest.pulled")


class DeliveryFailed(Exception):
    """The target did not take the event (no answer, a timeout, a status other than 2xx)."""


def sink_wants(sink: EventSink) -> tuple[frozenset[str], tuple[str, ...]]:
    """The event types and repository globs a sink subscribes to."""
    return (frozenset(sink.types) if sink.types else DEFAULT_TYPES), tuple(sink.repositories)


class HttpSink:
    """POSTs events to one endpoint; 2xx is delivered, anything else a failed attempt."""

    def __init__(self, settings: EventSink) -> None:
        self.name = settings.name
        self._settings = settings
        self._secret = settings.secret.get_secret_value().encode() if settings.secret else None
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._settings.insecure_tls:
            return False
        if self._settings.ca_cert is not None:
            return ssl.create_default_context(cafile=str(self._settings.ca_cert))
        return True

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=16),
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds),
            )
        return self._session

    async def deliver(self, delivery: Delivery) -> None:
        body = delivery.body.encode()
        headers = {
            **self._settings.headers,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": f"dockyard/{__version__}",
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            async with self.session.post(self._settings.url, data=body, headers=headers) as response:
                if not 200 <= response.status < 300:
                    text = (await response.content.read(300)).decode("utf-8", "replace")
                    raise DeliveryFailed(f"HTTP {response.status}: {text}".strip())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
