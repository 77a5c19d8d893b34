"""Three nodes over one PostgreSQL database and bucket: each event is delivered once while all is
well, and at least once (never lost) when nodes are killed mid-delivery."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.events.conftest import write_config
from tests.events.receiver import Receiver
from tests.events.test_events import FAST_RETRIES, sink
from tests.support.api_helpers import api_client, push_image
from tests.support.server import DockyardServer
from tests.support.services import SharedBackends


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.close()


@pytest.fixture
def nodes(shared_backends: SharedBackends, tmp_path: Path, hook: Receiver) -> Iterator[list[DockyardServer]]:
    env = shared_backends.server_env()
    config = write_config(tmp_path / "dockyard.yaml", events={"sinks": [sink(hook)], **FAST_RETRIES})
    cluster = [
        DockyardServer(tmp_path / f"node{i}", workers=1, env=env, extra_args=["--config", str(config)])
        for i in range(1, 4)
    ]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.start, cluster))
    yield cluster
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(DockyardServer.stop, cluster))


def _push_round_robin(nodes: list[DockyardServer], count: int, prefix: str) -> set[str]:
    digests = set()
    for i in range(count):
        with api_client(nodes[i % len(nodes)].url) as c:
            digests.add(push_image(c, f"{prefix}/r{i % 4}", f"t{i}", seed=f"{prefix}{i}").digest)
    return digests


def test_three_nodes_deliver_each_event_once_and_none_is_lost_when_nodes_die(
    nodes: list[DockyardServer], hook: Receiver
) -> None:
    digests = _push_round_robin(nodes, 12, "calm")
    hook.wait_for(lambda found: {e["data"]["digest"] for e in found} >= digests)
    ids = Counter(e["id"] for e in hook.events())
    assert len(ids) == 12 and set(ids.values()) == {1}, "delivered more than once with no fault"

    # Faults: a slow receiver keeps deliveries in flight while two nodes are killed and restarted.
    hook.delay = 0.3
    stormy = _push_round_robin(nodes, 12, "storm")
    for node in nodes[:2]:
        node.kill()
    for node in nodes[:2]:
        node.start()
    hook.wait_for(lambda found: {e["data"]["digest"] for e in found} >= digests | stormy, timeout=300)
    ids = Counter(e["id"] for e in hook.events())
    assert len(ids) == 24  # every event arrived (some perhaps twice: at least once)
