"""A rolling restart: three nodes over one PostgreSQL and one bucket, behind nginx, restarted one
after the other with SIGTERM while clients push and pull without pause. The clients retry the
way ``dockyard push``/``pull`` and skopeo do (a failed request again, an upload session resumed
from where the registry says it stands). No client operation fails; every push answered 201 is
pullable and intact afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.client.layout import OciLayout
from dockyard.client.progress import Progress
from dockyard.client.pull import pull_image
from dockyard.client.push import push_image
from dockyard.client.reference import ImageReference
from dockyard.client.registry import ClientOptions, Registry
from tests.lifecycle.nginx import Nginx
from tests.lifecycle.support import exit_code, sigterm, wait_for
from tests.support.oci_layout import build_image, layout_digests, resolve_tag
from tests.support.server import DockyardServer
from tests.support.services import SharedBackends

MiB = 1 << 20
PUSHERS = 2
PULLERS = 1


@dataclass(frozen=True)
class Pushed:
    reference: str  # host/repository:tag, through nginx
    digest: str
    layout: Path


@dataclass
class Load:
    """Clients pushing and pulling through nginx until told to stop; what they saw."""

    host: str
    root: Path
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pushed: list[Pushed] = field(default_factory=list)
    pulls: int = 0
    failures: list[str] = field(default_factory=list)
    faults_recovered: int = 0

    def completed(self) -> int:
        with self.lock:
            return len(self.pushed) + self.pulls

    def options(self) -> ClientOptions:
        # the client's defaults, with a shorter back-off: a test has no minutes to spare
        return ClientOptions(plain_http=True, backoff_base=0.2, backoff_max=2.0)

    def pusher(self, index: int) -> None:
        asyncio.run(self._push_loop(index))

    def puller(self, index: int) -> None:
        asyncio.run(self._pull_loop(index))

    async def _push_loop(self, index: int) -> None:
        async with Registry(f"http://{self.host}", self.options()) as registry:
            n = 0
            while not self.stop.is_set():
                n += 1
                layout = self.root / f"push-{index}-{n}"
                # one layer over the S3 part size: a session of two chunks (PATCH, PATCH, PUT)
                image = build_image(layout, layers=1, layer_size=6 * MiB, seed=index * 1_000_000 + n)
                reference = f"{self.host}/rolling/pusher{index}:n{n}"
                try:
                    report = await push_image(
                        OciLayout(layout),
                        "latest",
                        ImageReference.parse(reference),
                        registry,
                        progress=Progress(quiet=True),
                        chunk_size=5 * MiB,
                        single_post_max=64 * 1024,
                        resume=False,
                    )
                except Exception as exc:
                    with self.lock:
                        self.failures.append(f"push {reference}: {exc!r}")
                    continue
                with self.lock:
                    self.pushed.append(Pushed(reference, image.manifest.digest, layout))
                    self.faults_recovered += sum(r.faults for r in report.results)

    async def _pull_loop(self, index: int) -> None:
        rng = random.Random(index)
        async with Registry(f"http://{self.host}", self.options()) as registry:
            n = 0
            while not self.stop.is_set():
                with self.lock:
                    choices = list(self.pushed)
                if not choices:
                    await asyncio.sleep(0.2)
                    continue
                n += 1
                pushed = rng.choice(choices)
                try:
                    await _pull_and_compare(registry, pushed, self.root / f"pull-{index}-{n}")
                except Exception as exc:
                    with self.lock:
                        self.failures.append(f"pull {pushed.reference}: {exc!r}")
                    continue
                with self.lock:
                    self.pulls += 1


async def _pull_and_compare(registry: Registry, pushed: Pushed, out: Path) -> None:
    """Pull (the client verifies every digest) and compare with what was pushed."""
    await pull_image(
        ImageReference.parse(pushed.reference), registry, OciLayout(out), progress=Progress(quiet=True)
    )
    assert resolve_tag(out, pushed.reference.rsplit(":", 1)[1]).digest == pushed.digest
    assert layout_digests(out) == layout_digests(pushed.layout)


@pytest.fixture
def cluster(shared_backends: SharedBackends, tmp_path: Path) -> Iterator[list[DockyardServer]]:
    env = {**shared_backends.server_env(redirect=False), "DOCKYARD_SHUTDOWN_GRACE_SECONDS": "20"}
    nodes = [DockyardServer(tmp_path / f"node{i}" / "data", workers=2, env=env) for i in range(1, 4)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda node: node.start(timeout=180), nodes))
    yield nodes
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.stop, nodes))


def test_a_rolling_restart_under_load_fails_no_client_operation_and_loses_no_push(
    cluster: list[DockyardServer], tmp_path: Path
) -> None:
    nginx = Nginx(tmp_path / "nginx", [node.port for node in cluster]).start()
    load = Load(nginx.host, tmp_path / "load")
    threads = [threading.Thread(target=load.pusher, args=(i,)) for i in range(PUSHERS)]
    threads += [threading.Thread(target=load.puller, args=(i,)) for i in range(PULLERS)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: load.completed() >= 2, "the load gets going")
        for node in cluster:
            before = load.completed()
            wait_for(lambda before=before: load.completed() > before, "operations complete between restarts")
            sigterm(node)
            assert exit_code(node) == 0, node.log()[-3000:]
            node.start(timeout=180)  # the same address: nginx sends it traffic again
        after = load.completed()
        wait_for(lambda: load.completed() >= after + 2, "operations complete after the last restart")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=600)
        nginx.stop()
    assert not any(thread.is_alive() for thread in threads)
    assert load.failures == []
    assert load.pushed
    answers = nginx.answers()
    assert not [a for a in answers if a[0] == 500 or "500" in a[2]]  # no node had an internal error
    for node in cluster:
        assert "unhandled error" not in node.log() and "Traceback" not in node.log()

    async def verify() -> None:
        # every push answered 201, pulled again from each node directly (no load balancer)
        for i, pushed in enumerate(load.pushed):
            node = cluster[i % len(cluster)]
            direct = Pushed(pushed.reference.replace(nginx.host, node.host), pushed.digest, pushed.layout)
            async with Registry(node.url, ClientOptions(plain_http=True)) as registry:
                await _pull_and_compare(registry, direct, tmp_path / f"verify-{i}")

    asyncio.run(verify())
    fsck = subprocess.run(
        [sys.executable, "-m", "dockyard", "fsck", "--json", "--data-dir", str(cluster[0].data_dir)],
        env={**os.environ, **cluster[0].env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"], fsck.stdout + fsck.stderr
    retried = [a for a in answers if "," in a[2]]  # nginx tried another node
    failed = [a for a in answers if a[0] >= 500]
    print(
        f"\n{len(load.pushed)} pushes, {load.pulls} pulls through 3 restarts, {len(answers)} requests; "
        f"nginx sent {len(retried)} to another node, answered {len(failed)} with 5xx "
        f"({sorted(set(failed))[:5]}); the client recovered {load.faults_recovered} upload faults"
    )
