"""A real HTTP receiver of events on loopback: an aiohttp server in a thread of the test process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.server import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """Records every POST to ``/hook``; answers ``status`` (204), or is not listening while down."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 204
        self.delay = 0.0  # seconds to wait before answering
        self.received: list[Received] = []
        self.attempts = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            self.attempts += 1
            status = self.status
            if 200 <= status < 300:
                self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body))
        return web.Response(status=status, text="" if status < 300 else "not now")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Receiver:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.event for r in self.received]

    def wait_for(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 120.0
    ) -> list[dict[str, Any]]:
        """Poll until ``condition(events)`` holds (generous: the machine may be busy)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events()
            if condition(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout}s; received {len(found)}: {found}")
            time.sleep(0.1)
