"""Which event loop the workers run (``event_loop``), seen from outside: each worker names its
loop in the log once it serves; and the blob paths work on both loops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.api_helpers import api_client, digest_of, open_session, push_blob, push_image
from tests.support.server import DockyardServer

_SERVING = re.compile(r"worker (\d+) serving on the (\S+) event loop")


def worker_loops(server: DockyardServer, workers: int, timeout: float = 30.0) -> dict[int, str]:
    """pid -> the loop each worker says it runs, once all ``workers`` have said it."""
    deadline = time.monotonic() + timeout
    while True:
        loops = {int(pid): loop for pid, loop in _SERVING.findall(server.log())}
        if len(loops) >= workers or time.monotonic() > deadline:
            return loops
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_workers_run_on_uvloop_by_default(start_server: Callable[..., DockyardServer]) -> None:
    pytest.importorskip("uvloop", reason="uvloop is a dependency where it builds (not on Windows)")
    server = start_server(workers=2)
    assert sorted(worker_loops(server, 2).values()) == ["uvloop", "uvloop"], server.log()


def test_event_loop_asyncio_runs_the_stock_loop(start_server: Callable[..., DockyardServer]) -> None:
    server = start_server(workers=2, env={"DOCKYARD_EVENT_LOOP": "asyncio"})
    assert sorted(worker_loops(server, 2).values()) == ["asyncio", "asyncio"], server.log()


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_blob_get_whole_and_ranged_on_either_loop(
    start_server: Callable[..., DockyardServer], repo: str, loop: str
) -> None:
    server = start_server(env={"DOCKYARD_EVENT_LOOP": loop})
    data = os.urandom(3 * 1024 * 1024 + 17)
    with api_client(server.url) as client:
        digest = push_blob(client, repo, data)
        whole = client.get(f"/v2/{repo}/blobs/{digest}")
        assert (whole.status_code, whole.content == data) == (200, True)
        part = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1048570-2097160"})
        assert part.status_code == 206
        assert part.content == data[1048570:2097161]
        assert part.headers["content-range"] == f"bytes 1048570-2097160/{len(data)}"


def test_an_empty_body_leaves_the_worker_idle(start_server: Callable[..., DockyardServer], repo: str) -> None:
    """An empty PATCH and an empty PUT end their body streams at once: afterwards the worker uses
    (almost) no CPU, it does not keep reading a body that has ended."""
    server = start_server(workers=1)
    with api_client(server.url) as client:
        location = open_session(client, repo)
        patch = client.patch(location, content=b"", headers={"Content-Type": "application/octet-stream"})
        assert patch.status_code == 202, patch.text
        empty = digest_of(b"")
        put = client.put(patch.headers["location"], params={"digest": empty}, content=b"")
        assert put.status_code == 201, put.text
        # the same on a connection that stays open, with a chunked (length-less) empty body
        location = open_session(client, repo)
        put = client.put(location, params={"digest": empty}, content=iter([b""]))
        assert put.status_code == 201, put.text
        assert server.process is not None
        before = cpu_seconds(server.process.pid)
        time.sleep(2.0)
        used = cpu_seconds(server.process.pid) - before
        assert used < 0.5, f"the idle worker used {used:.2f} s of CPU in 2 s"
        assert client.get(f"/v2/{repo}/blobs/{empty}").content == b""


def test_a_client_command_runs_on_the_loop_named_in_the_environment(
    registry_server: DockyardServer, tmp_path: Path, repo: str
) -> None:
    """The client reads no settings file: ``DOCKYARD_EVENT_LOOP`` picks its loop, and a value
    that names no loop is refused before anything is sent."""
    with api_client(registry_server.url) as client:
        image = push_image(client, repo, "v1", seed=repo)

    def pull(loop: str, layout: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dockyard", "pull", f"{registry_server.host}/{repo}:v1", str(layout)],
            env={**os.environ, "DOCKYARD_EVENT_LOOP": loop},
            capture_output=True,
            text=True,
            timeout=120,
        )

    for loop in ("asyncio", "auto"):
        done = pull(loop, tmp_path / loop)
        assert done.returncode == 0, (loop, done.stdout, done.stderr)
        assert image.digest.split(":")[1] in {p.name for p in (tmp_path / loop).rglob("*")}
    refused = pull("tokio", tmp_path / "refused")
    assert refused.returncode != 0
    assert "DOCKYARD_EVENT_LOOP" in refused.stderr
