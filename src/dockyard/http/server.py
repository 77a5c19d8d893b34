"""Running the app: one process, or N worker processes sharing one listening socket."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import pickle
import signal
import socket
import ssl
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dockyard.http import health, metrics, supervisor
from dockyard.http.app import create_app
from dockyard.http.drain import DRAIN
from dockyard.loop import LoopUnavailable, loop_factory, loop_name
from dockyard.loop import run as run_loop
from dockyard.startup import StartupError, wait_for_dependencies

if TYPE_CHECKING:
    from dockyard.config import Settings

log = logging.getLogger("dockyard")

CUT_SECONDS = 5.0  # after the grace period: for cut uploads to record where they stopped
KILL_AFTER_SECONDS = 10.0  # the supervisor kills a worker still running this long after that
DRAIN_POLL_SECONDS = 0.1  # how often a draining worker looks at its connections


class _MalformedRequests(logging.Filter):
    """aiohttp logs each request it cannot parse (a bad request line, a bad header) at ERROR with
    a traceback. A client's garbage is not the server's error, and anyone could fill the log with
    it: one line at INFO instead, the offending bytes cut short and escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not log.isEnabledFor(logging.INFO):
            return False
        lines = [line.strip() for line in (exc.message or "").splitlines() if line.strip()]
        record.msg = "malformed request (%s answered): %r"
        record.args = (exc.code, " ".join(lines[:2])[:300])
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True


LISTEN_BACKLOG = 1024
_ACCEPTS_PER_WAKEUP = 1


def bind_socket(listen: str) -> socket.socket:
    """The address (``HOST:PORT``), taken (a port in use fails here, at once) but not yet
    listening: until the start-up checks pass, a connection is refused rather than left waiting."""
    host = listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
    port = int(listen.rpartition(":")[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS when a certificate is configured; client certificates checked against tls_client_ca
    (required in auth mode mtls, optional otherwise)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=str(settings.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if settings.auth.mode == "mtls" else ssl.CERT_OPTIONAL
    return context


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _serve(settings: Settings, sock: socket.socket, health_sock: socket.socket | None = None) -> None:
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
    app = create_app(settings)
    grace = settings.shutdown_grace_seconds
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout_seconds,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
        # _drain has waited for the requests in flight: what is left is cancelled soon
        shutdown_timeout=1.0,
    )
    await runner.setup()
    # One connection per wake-up of the accept loop: asyncio otherwise accepts up to ``backlog``
    # at once, so one worker takes a whole burst of new connections (32 clients connecting
    # together all landed on one worker of two). ``start`` re-listens with the backlog given;
    # the kernel's queue goes back to its size at once.
    site = web.SockSite(runner, sock, ssl_context=tls_context(settings), backlog=_ACCEPTS_PER_WAKEUP)
    await site.start()
    sock.listen(LISTEN_BACKLOG)
    log.info("worker %d serving on the %s event loop", os.getpid(), loop_name())
    probes: web.AppRunner | None = None
    if health_sock is not None:  # health_listen: the probes alone, plain HTTP, answering while draining
        probes = web.AppRunner(health.probe_app(app), handle_signals=False, access_log=None)
        await probes.setup()
        await web.SockSite(probes, health_sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        try:
            await _drain(app, runner, site, grace)
        finally:
            if probes is not None:
                await probes.cleanup()


async def _drain(app: web.Application, runner: web.AppRunner, site: web.BaseSite, grace: float) -> None:
    """Graceful shutdown: readiness turns false, this worker stops accepting (its copy of the
    listening socket closes), idle keep-alive connections close, requests in flight get
    ``grace`` seconds, their bodies still arriving included; then bodies still arriving are cut
    (their upload sessions keep the bytes that arrived), and what still runs CUT_SECONDS later
    is cancelled. (aiohttp's own shutdown stops reading request bodies at once: not used until
    the requests in flight are done.)"""
    drain = app[DRAIN]
    drain.draining = True
    await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    idle_before: set[object] = set()
    server = runner.server
    while server is not None:
        pending = False
        idle_now: set[object] = set()
        for conn in server.connections:
            if _busy(conn):
                pending = True
            elif conn in idle_before:  # idle on two looks running: no request on its way in
                conn.force_close()
            else:
                idle_now.add(conn)
                pending = True
        idle_before = idle_now
        if not pending:
            break
        now = loop.time()
        if now >= deadline:
            if drain.cut:
                break
            drain.cut = True
            deadline = now + CUT_SECONDS
            log.info("shutdown: grace period over; cutting request bodies still arriving")
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    await runner.cleanup()


def _busy(conn: object) -> bool:
    """Whether the connection is serving a request (reading it, handling it, or sending the
    answer). aiohttp keeps this in a private flag; without it every connection counts as busy
    (the drain then waits the grace period out: slower, never wrong)."""
    return bool(getattr(conn, "_request_in_progress", True))


def _run_worker(settings: Settings, sock: socket.socket, health_sock: socket.socket | None) -> None:
    run_loop(_serve(settings, sock, health_sock), settings.event_loop)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT. Workers that die are replaced; the socket stays open."""
    try:
        tls_context(settings)  # a bad certificate or key fails here, before any worker starts
    except FileNotFoundError as exc:
        raise StartupError(f"tls_cert, tls_key: {exc.filename}: {exc.strerror}") from exc
    except PermissionError as exc:
        raise StartupError(f"tls_cert, tls_key: {exc.filename}: {exc.strerror}") from exc
    try:
        loop_factory(settings.event_loop)
    except LoopUnavailable as exc:
        raise StartupError(str(exc)) from exc
    sockets = [bind_socket(settings.listen)]
    try:
        if settings.health_listen:
            sockets.append(bind_socket(settings.health_listen))
        # The stores answer, and the schema is created or migrated once, here, before the
        # workers race to open it (docs/operations.md "Start-up checks").
        run_loop(wait_for_dependencies(settings), settings.event_loop)
        for listening in sockets:
            listening.listen(LISTEN_BACKLOG)
    except BaseException:
        for listening in sockets:
            listening.close()
        raise
    sock, health_sock = sockets[0], (sockets[1] if len(sockets) > 1 else None)
    log.info(
        "dockyard listening on %s://%s:%d/ (data: %s, workers: %d, auth: %s)",
        "https" if settings.tls_cert else "http",
        settings.host,
        sock.getsockname()[1],
        settings.data_dir,
        settings.workers,
        settings.auth.mode,
    )
    if settings.health_listen:
        log.info("health probes on http://%s/health/ready (health_listen)", settings.health_listen)
    if settings.auth.mode == "none" and not is_loopback(settings.host):
        log.warning(
            "listening on %s WITHOUT access control: anyone who can reach it may push and delete "
            "(set auth.mode, see docs/access-control.md)",
            settings.host,
        )
    if settings.workers == 1:
        metrics.use_this_process_only()
        _run_worker(settings, sock, health_sock)
        return
    # The supervisor is a small process of its own (http/supervisor.py): this one, holding
    # everything the checks above imported, is replaced by it.
    from dockyard.config import freeze  # here: a worker imports this module, and no pydantic

    supervisor.handover(
        pickle.dumps(freeze(settings)),  # the workers need no pydantic (frozen.py)
        sock,
        health_sock,
        {
            "workers": settings.workers,
            "log_level": settings.log_level,
            "grace": settings.shutdown_grace_seconds,
            "stop_after": settings.shutdown_grace_seconds + CUT_SECONDS + KILL_AFTER_SECONDS,
        },
    )


def run_worker(settings: Settings, sock: socket.socket, health_sock: socket.socket | None) -> None:
    """Serve as one of the supervisor's workers until SIGTERM."""
    _run_worker(settings, sock, health_sock)
