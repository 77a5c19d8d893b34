"""The supervisor of N workers: a small process that forks them, replaces those that die and
stops them all on SIGTERM/SIGINT.

``dockyard serve`` checks the settings and the dependencies in the process that parsed them,
then execs ``python -m dockyard.http.supervisor`` (same pid), handing over the listening sockets
as inherited descriptors and the settings pickled into a memfd. The supervisor imports neither
aiohttp nor SQLAlchemy nor pydantic: only each worker it forks loads the settings and the server.
So the supervisor holds ~10 MiB, not a copy of everything the workers import. The settings travel
as plain values (config.freeze, frozen.py): the workers do not import pydantic either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from dockyard.http import metricfiles

log = logging.getLogger("dockyard")

PLAN = "DOCKYARD_SUPERVISOR"  # the environment variable the plan travels in
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as cli.py


def handover(
    settings: bytes, sock: socket.socket, health_sock: socket.socket | None, plan: dict[str, Any]
) -> NoReturn:
    """Become the supervisor (exec): ``settings`` pickled, the sockets listening, ``plan`` the
    rest it needs (workers, log_level, stop_after: seconds until stragglers are killed)."""
    memfd = os.memfd_create("dockyard-settings", 0)  # inherited: no MFD_CLOEXEC
    os.write(memfd, settings)
    fds = [sock.fileno()] + ([health_sock.fileno()] if health_sock is not None else [])
    for fd in fds:
        os.set_inheritable(fd, True)
    os.environ[PLAN] = json.dumps({**plan, "settings": [memfd, len(settings)], "sockets": fds})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "dockyard.http.supervisor"])


def main() -> None:
    plan = json.loads(os.environ.pop(PLAN))
    logging.basicConfig(level=plan["log_level"].upper(), format=LOG_FORMAT)
    sockets = [socket.socket(fileno=fd) for fd in plan["sockets"]]
    for s in sockets:
        os.set_inheritable(s.fileno(), False)  # the workers get them by fork, nothing else by exec
    # Workers record request metrics into files here, so that any one of them can answer a
    # scrape with the sum over all. This process owns the directory; a new server starts empty.
    metrics_dir = Path(tempfile.mkdtemp(prefix="dockyard-metrics-"))
    os.environ[metricfiles.DIRECTORY_ENV] = str(metrics_dir)
    try:
        supervise(plan, sockets[0], sockets[1] if len(sockets) > 1 else None, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker(plan: dict[str, Any], sock: socket.socket, health_sock: socket.socket | None) -> None:
    """In a forked child: load the settings and the server, serve until told to stop."""
    import pickle

    from dockyard.http.server import run_worker

    memfd, size = plan["settings"]
    settings = pickle.loads(os.pread(memfd, size, 0))
    os.close(memfd)
    run_worker(settings, sock, health_sock)


def supervise(
    plan: dict[str, Any], sock: socket.socket, health_sock: socket.socket | None, metrics_dir: Path
) -> None:
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
                _worker(plan, sock, health_sock)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        # This process's copies of the listening sockets: once the workers close theirs, the
        # address refuses new connections (a load balancer tries another node at once).
        sock.close()
        if health_sock is not None:
            health_sock.close()
        log.info("shutting down: requests in flight get %g s (shutdown_grace_seconds)", plan["grace"])
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signal.signal(signal.SIGALRM, lambda _signum, _frame: _kill_stragglers(children))
        signal.setitimer(signal.ITIMER_REAL, plan["stop_after"])

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(plan["workers"]):
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
            metricfiles.forget_in_flight(metrics_dir, pid)
        if index is not None and not stopping:
            log.warning("worker %d (pid %d) exited with status %d; restarting it", index, pid, status)
            time.sleep(0.2)
            spawn(index)
    signal.setitimer(signal.ITIMER_REAL, 0)
    sock.close()
    if health_sock is not None:
        health_sock.close()
    sys.stdout.flush()


def _kill_stragglers(children: dict[int, int]) -> None:
    """Workers that outlived the grace period by far (a handler that ignores cancellation)."""
    for pid, index in children.items():
        log.warning("worker %d (pid %d) did not stop in time; killing it", index, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
