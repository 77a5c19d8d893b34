"""A fault-injecting TCP proxy on 127.0.0.1, between a client and a registry.

It runs its own event loop in a thread, so synchronous tests, in-process async clients and
``dockyard`` subprocesses can all go through it. It counts the bytes it forwards each way, and
injects the faults a bad network has, at byte positions given in advance:

- ``cut_upstream_at(n)``: forward client→server bytes up to the n-th (counted over the proxy's
  life), then abort both connections (the request body is cut mid-way);
- ``drop_response_after(n)``: once n bytes went upstream, the next response the server sends is
  not forwarded, both connections are aborted (the request arrived whole; its answer is lost);
- ``stall_upstream_at(n, seconds)``: stop forwarding upstream at byte n for ``seconds``, then
  abort (a link that goes silent: the client's timeout fires);
- ``hold_upstream_at(n)``: stop forwarding upstream at byte n until ``release()``, on every
  connection (a client's retries wait too), then abort the connection that reached it (the test
  decides when, whatever the machine's speed: "stopped mid-blob" without a race);
- ``cut_downstream_at(n)``: the same as ``cut_upstream_at`` for server→client bytes (pulls);
- ``rate``: at most this many client→server bytes per second; ``delay``: latency per piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Fault:
    kind: str  # "cut_up", "cut_down", "drop_response", "stall"
    at: int
    seconds: float | None = 0.0  # a stall's length; None: until release()
    fired: bool = False


@dataclass
class FaultProxy:
    target_port: int
    target_host: str = "127.0.0.1"
    rate: float | None = None  # client→server bytes per second
    delay: float = 0.0
    upstream: int = 0  # client→server bytes forwarded
    downstream: int = 0  # server→client bytes forwarded
    connections: int = 0
    fired: list[str] = field(default_factory=list)
    port: int = 0
    _faults: list[_Fault] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults ---------------------------------------------------------------------------------

    def cut_upstream_at(self, n: int) -> None:
        self._add(_Fault("cut_up", n))

    def cut_downstream_at(self, n: int) -> None:
        self._add(_Fault("cut_down", n))

    def drop_response_after(self, n: int) -> None:
        self._add(_Fault("drop_response", n))

    def stall_upstream_at(self, n: int, seconds: float) -> None:
        self._add(_Fault("stall", n, seconds))

    def hold_upstream_at(self, n: int) -> None:
        self._add(_Fault("stall", n, None))

    def holding(self) -> bool:
        """Whether a hold has stopped the upstream bytes (and waits for ``release``)."""
        with self._lock:
            return any(f.kind == "stall" and f.seconds is None and f.fired for f in self._faults)

    def release(self) -> None:
        self._released.set()

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def pending(self) -> list[str]:
        with self._lock:
            return [f"{f.kind}@{f.at}" for f in self._faults if not f.fired]

    def reset_counts(self) -> None:
        with self._lock:
            self.upstream = self.downstream = 0
            self._faults = [f for f in self._faults if not f.fired]

    def _due(self, kind: str, position: int) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and not fault.fired and fault.at <= position:
                    return fault
        return None

    def _next(self, kind: str, position: int) -> _Fault | None:
        """The first unfired fault of ``kind`` at or after ``position``."""
        with self._lock:
            ahead = [f for f in self._faults if f.kind == kind and not f.fired and f.at >= position]
        return min(ahead, key=lambda f: f.at) if ahead else None

    def _fire(self, fault: _Fault) -> None:
        with self._lock:
            fault.fired = True
            self.fired.append(
                f"{fault.kind}@{fault.at} (upstream {self.upstream}, downstream {self.downstream})"
            )

    # -- running --------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        self._released.set()  # no thread left waiting on a hold
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels connections in flight
            await self._relay(client_reader, client_writer)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        done = asyncio.Event()

        def abort() -> None:
            client_writer.transport.abort()
            server_writer.transport.abort()
            done.set()

        async def up() -> None:
            while True:
                data = await client_reader.read(256 * 1024)
                if not data:
                    break
                while data:
                    stall = self._next("stall", self.upstream)
                    if stall is not None and stall.at <= self.upstream + len(data):
                        head = stall.at - self.upstream
                        await self._forward_up(server_writer, data[:head])
                        self._fire(stall)
                        if stall.seconds is None:
                            await asyncio.to_thread(self._released.wait)
                        else:
                            await asyncio.sleep(stall.seconds)
                        abort()
                        return
                    cut = self._next("cut_up", self.upstream)
                    if cut is not None and cut.at < self.upstream + len(data):
                        await self._forward_up(server_writer, data[: cut.at - self.upstream])
                        self._fire(cut)
                        await asyncio.sleep(0.05)  # let the bytes reach the server before the cut
                        abort()
                        return
                    piece, data = data[:65536], data[65536:]
                    await self._forward_up(server_writer, piece)
            with contextlib.suppress(OSError):
                server_writer.write_eof()

        async def down() -> None:
            while True:
                data = await server_reader.read(256 * 1024)
                if not data:
                    break
                drop = self._due("drop_response", self.upstream)
                if drop is not None:
                    self._fire(drop)
                    abort()
                    return
                cut = self._next("cut_down", self.downstream)
                if cut is not None and cut.at < self.downstream + len(data):
                    head = cut.at - self.downstream
                    client_writer.write(data[:head])
                    self.downstream += head
                    with contextlib.suppress(OSError):
                        await client_writer.drain()
                    self._fire(cut)
                    abort()
                    return
                client_writer.write(data)
                self.downstream += len(data)
                await client_writer.drain()
            abort()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(
                [asyncio.create_task(done.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
            )
            if not done.is_set():
                # One side ended cleanly: let the other finish what it has, briefly.
                await asyncio.wait(tasks, timeout=30)
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
            abort()

    async def _forward_up(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not data:
            return
        if self.holding():
            await asyncio.to_thread(self._released.wait)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.rate:
            await asyncio.sleep(len(data) / self.rate)
        writer.write(data)
        self.upstream += len(data)
        await writer.drain()


def wait_for(condition: object, timeout: float = 30.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")
