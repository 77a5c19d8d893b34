"""The processes a benchmark run starts and measures: dockyard, nginx, wrk, curl, strace, py-spy."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# tool -> Debian package that provides it
TOOLS = {"nginx": "nginx-light", "wrk": "wrk", "hey": "hey", "curl": "curl"}
OPTIONAL_TOOLS = {"strace": "strace"}


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and name == "nginx" and os.path.exists("/usr/sbin/nginx"):
        found = "/usr/sbin/nginx"
    return found


def check_tools() -> list[str]:
    """The apt packages that are missing (empty when everything needed is here)."""
    return sorted({pkg for tool, pkg in TOOLS.items() if find_tool(tool) is None})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None, cafile: str | None = None
) -> None:
    """Poll ``url`` until it answers (an HTTPS one trusting ``cafile``); fail if ``proc`` exits."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                resp.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def private_kib(pid: int) -> int | None:
    """Private_Clean + Private_Dirty (USS): what the process alone holds, shared pages left out."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


# -- dockyard ---------------------------------------------------------------------------------------


class Dockyard:
    """``dockyard serve`` with default settings, in its own session (its pid is its group id).

    ``tls`` (certificate, key): HTTPS with ``--tls-cert``/``--tls-key``. ``settings``: the few
    ``DOCKYARD_*`` variables a comparison needs (``{"DOCKYARD_EVENT_LOOP": "asyncio"}``)."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        exe = Path(sys.executable).with_name("dockyard")
        self.cmd = [str(exe) if exe.exists() else "dockyard"]
        self.port = free_port()
        self.tls = tls
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_timeout = 30.0  # seconds until /v2/ answers (a busy machine needs more)

    def start(self) -> None:
        args = [*self.cmd, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        # Default settings: no DOCKYARD_* from the caller's environment (workers, config, ...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(self.settings)
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        log.close()
        wait_http(
            f"{self.base}/v2/",
            timeout=self.start_timeout,
            proc=self.proc,
            cafile=str(self.tls[0]) if self.tls else None,
        )
        # every worker must be up, or the first workload measures start-up
        expected = os.cpu_count() or 1
        deadline = time.monotonic() + 20
        while len(self.workers()) < expected and expected > 1 and time.monotonic() < deadline:
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[int]:
        return children(self.pid)

    def pids(self) -> list[int]:
        return [self.pid, *self.workers()]

    def blob_path(self, digest: str) -> Path:
        algorithm, hexa = digest.split(":", 1)
        return self.data_dir / "blobs" / algorithm / hexa[:2] / hexa

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this run created
            self.proc.wait(timeout=5)


# -- nginx ------------------------------------------------------------------------------------------

NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
"""

NGINX_CONF = """\
{user}worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
{tls}        location = /blob {{ alias {blob}; default_type application/octet-stream; }}
        location = /manifest {{
            alias {manifest};
            default_type application/vnd.oci.image.manifest.v1+json;
        }}
    }}
}}
"""


class Nginx:
    """Debian's nginx with a generated config, serving one blob file and one manifest file;
    over HTTPS with ``tls`` (certificate, key)."""

    def __init__(
        self, prefix: Path, blob: Path, manifest: Path, *, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.tls = tls
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.blob = blob
        self.manifest = manifest
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        # As root nginx workers drop to "nobody", who cannot read a 0700 temp dir: stay root.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user=user,
                prefix=self.prefix,
                port=self.port,
                ssl=" ssl" if self.tls else "",
                tls=NGINX_TLS.format(cert=self.tls[0], key=self.tls[1]) if self.tls else "",
                blob=self.blob,
                manifest=self.manifest,
            )
        )
        nginx = find_tool("nginx") or "nginx"
        args = [nginx, "-c", str(conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        log = open(self.prefix / "stdout.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_http(f"{self.base}/manifest", proc=self.proc, cafile=str(self.tls[0]) if self.tls else None)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


# -- load generators ----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_s: float
    latency_p99_ms: float | None
    requests: int
    errors: str | None  # socket errors / non-2xx, as wrk words them


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int,
    script: Path | None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    args = [
        find_tool("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"([0-9]+) requests in", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    problems = []
    for pattern in (r"Socket errors:[^\n]*", r"Non-2xx or 3xx responses:[^\n]*"):
        m = re.search(pattern, out)
        if m:
            problems.append(m.group(0).strip())
    return WrkResult(rps, _ms(p99.group(1)) if p99 else None, total, "; ".join(problems) or None)


def hey(
    url: str, *, connections: int, duration: float, method: str = "GET", headers: dict[str, str] | None = None
) -> WrkResult:
    """``hey`` for what wrk 4.1 cannot do: it never finishes a HEAD response (waits for the body)."""
    args = [
        find_tool("hey") or "hey",
        "-m",
        method,
        "-c",
        str(connections),
        "-z",
        f"{max(1, round(duration))}s",
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99% in ([0-9.]+) secs", out)
    statuses = dict(re.findall(r"\[([0-9]+)\]\s+([0-9]+) responses", out))
    total = sum(int(v) for v in statuses.values())
    problems = [f"{n} x HTTP {code}" for code, n in statuses.items() if not code.startswith("2")]
    if "Error distribution" in out:
        problems.append(out.split("Error distribution:", 1)[1].strip().splitlines()[0].strip())
    return WrkResult(rps, float(p99.group(1)) * 1e3 if p99 else None, total, "; ".join(problems) or None)


def _curl(url: str, measure: str, timeout: float, cacert: Path | None = None) -> tuple[float, int]:
    """One GET into /dev/null: (curl's ``measure`` variable, bytes); HTTPS trusting ``cacert``."""
    write_out = f"%{{{measure}}} %{{size_download}}"
    trust = ["--cacert", str(cacert)] if cacert else []
    out = subprocess.run(
        [find_tool("curl") or "curl", "-sS", "--fail", *trust, "-o", "/dev/null", "-w", write_out, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout.split()
    return float(out[0]), int(out[1])


def curl_speed(url: str, cacert: Path | None = None) -> tuple[float, int]:
    """One GET into /dev/null: (bytes/s, bytes)."""
    return _curl(url, "speed_download", 600, cacert)


def curl_upload(url: str, path: Path, cacert: Path | None = None) -> tuple[int, float]:
    """One ``PUT`` of a file (streamed, ``Content-Length`` from its size): (HTTP status, seconds)."""
    trust = ["--cacert", str(cacert)] if cacert else []
    out = subprocess.run(
        [
            *(find_tool("curl") or "curl", "-sS", *trust, "-o", "/dev/null"),
            *("-w", "%{http_code} %{time_total}", "-H", "Content-Type: application/octet-stream"),
            *("-T", str(path), url),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    return int(out[0]), float(out[1])


def curl_time(url: str) -> tuple[float, int]:
    """One GET into /dev/null: (seconds, bytes)."""
    return _curl(url, "time_total", 1200)


# -- RSS sampling -------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples VmRSS of dockyard's processes every ``interval`` s; peaks per phase and pid."""

    server: Dockyard
    interval: float = 0.1
    phase: str = "idle"
    peaks: dict[str, dict[int, int]] = field(default_factory=dict)  # phase -> pid -> KiB
    private_peaks: dict[str, dict[int, int]] = field(default_factory=dict)  # the same, for USS
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def sample(self) -> None:
        peaks = self.peaks.setdefault(self.phase, {})
        private = self.private_peaks.setdefault(self.phase, {})
        for pid in self.server.pids():
            kib = rss_kib(pid)
            if kib is not None and kib > peaks.get(pid, 0):
                peaks[pid] = kib
            kib = private_kib(pid)
            if kib is not None and kib > private.get(pid, 0):
                private[pid] = kib

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def worker_peak_mib(self, phase: str, private: bool = False) -> float:
        workers = set(self.server.workers())
        peaks = (self.private_peaks if private else self.peaks).get(phase, {})
        values = [kib for pid, kib in peaks.items() if pid in workers] or [0]
        return max(values) / 1024

    def parent_peak_mib(self, phase: str) -> float:
        return self.peaks.get(phase, {}).get(self.server.pid, 0) / 1024


# -- the machine --------------------------------------------------------------------------------------


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on (field 3 of proc(5))


def descendants(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None:
                parent[int(entry)] = int(fields[1])
    found, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found.add(child)
                frontier.append(child)
    return found


class CpuMeter:
    """CPU that processes outside this run used meanwhile (someone's tests, a build...).

    Each snapshot reads utime+stime+cutime+cstime of every user-space process; the share is the
    growth of those that are not this run's (this process and its descendants). Kernel threads
    are left out: writeback and network work done for this run's own I/O land there.
    """

    HZ = os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> tuple[float, dict[int, int], int]:
        ours = descendants(os.getpid())
        others: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in ours:
                continue
            fields = _stat_fields(entry)
            if fields is None or int(fields[1]) in (0, 2) or int(fields[6]) & 0x00200000:  # PF_KTHREAD
                continue
            others[int(entry)] = sum(int(x) for x in fields[11:15])
        with open("/proc/stat") as f:
            cpu = f.readline().split()[1:]
        steal = int(cpu[7]) if len(cpu) > 7 else 0
        return time.monotonic(), others, steal

    def foreign_share(
        self, start: tuple[float, dict[int, int], int], end: tuple[float, dict[int, int], int]
    ) -> tuple[float, float]:
        """(share of all cores used by other processes, share stolen by the hypervisor), 0..1."""
        wall = max(1e-6, end[0] - start[0])
        cores = os.cpu_count() or 1
        used = sum(max(0, t - start[1].get(pid, 0)) for pid, t in end[1].items())
        # A process that exited moved its whole lifetime into its parent's cutime: the part
        # counted at the start snapshot would otherwise count twice.
        used = max(0, used - sum(t for pid, t in start[1].items() if pid not in end[1]))
        steal = end[2] - start[2]
        return used / self.HZ / wall / cores, steal / self.HZ / wall / cores
