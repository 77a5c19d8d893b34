"""Fixtures for the events tests: receivers on loopback, servers configured with sinks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.events.receiver import Receiver
from tests.support.server import DockyardServer


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    """``receivers()`` makes a new receiver (not listening until ``.start()``)."""
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for r in made:
        r.close()


def write_config(path: Path, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def configured_server(
    tmp_path: Path, start_server: Callable[..., DockyardServer]
) -> Callable[..., DockyardServer]:
    """``configured_server(events={...}, replication={...}, workers=1, env={...})``."""
    count = 0

    def start(workers: int = 1, env: dict[str, str] | None = None, **settings: Any) -> DockyardServer:
        nonlocal count
        count += 1
        config = write_config(tmp_path / f"dockyard-{count}.yaml", **settings)
        return start_server(workers=workers, env=env or {}, extra_args=["--config", str(config)])

    return start
