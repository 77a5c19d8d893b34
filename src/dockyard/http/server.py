"""Running the app: one process, or N worker processes sharing one listening socket."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dockyard.config import Settings
from dockyard.http import metrics
from dockyard.http.app import create_app
from dockyard.wiring import build_registry

log = logging.getLogger("dockyard")


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


async def _prepare_metadata(settings: Settings) -> None:
    """Create or migrate the schema once, in the parent, before workers race to open it."""
    core = build_registry(settings)
    await core.meta.open()
    await core.meta.close()


def bind_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
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


async def _serve(settings: Settings, sock: socket.socket) -> None:
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout_seconds,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=tls_context(settings))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _run_worker(settings: Settings, sock: socket.socket) -> None:
    asyncio.run(_serve(settings, sock))


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT. Workers that die are replaced; the socket stays open."""
    tls_context(settings)  # a bad certificate or key fails here, before any worker starts
    asyncio.run(_prepare_metadata(settings))
    sock = bind_socket(settings)
    log.info(
        "dockyard listening on %s://%s:%d/ (data: %s, workers: %d, auth: %s)",
        "https" if settings.tls_cert else "http",
        settings.host,
        sock.getsockname()[1],
        settings.data_dir,
        settings.workers,
        settings.auth.mode,
    )
    if settings.auth.mode == "none" and not is_loopback(settings.host):
        log.warning(
            "listening on %s WITHOUT access control: anyone who can reach it may push and delete "
            "(set auth.mode, see docs/access-control.md)",
            settings.host,
        )
    if settings.workers == 1:
        metrics.use_this_process_only()
        _run_worker(settings, sock)
        return
    # Workers record request metrics into files here, so that any one of them can answer a
    # scrape with the sum over all. This process owns the directory; a new server starts empty.
    metrics_dir = Path(tempfile.mkdtemp(prefix="dockyard-metrics-"))
    metrics.use_shared_directory(metrics_dir)
    try:
        _supervise(settings, sock)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, sock: socket.socket) -> None:
    """Fork the workers, replace those that die, stop them all on SIGTERM/SIGINT."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _run_worker(settings, sock)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(settings.workers):
        spawn(i)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is not None:
            metrics.process_exited(pid)
        if index is not None and not stopping:
            log.warning("worker %d (pid %d) exited with status %d; restarting it", index, pid, status)
            time.sleep(0.2)
            spawn(index)
    sock.close()
    sys.stdout.flush()
