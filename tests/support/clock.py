"""A server clock the test moves forward, instead of sleeping past a TTL and hoping the machine
is fast enough (``dockyard.clock``: ``DOCKYARD_TEST_CLOCK_FILE``)."""

from __future__ import annotations

import os
from pathlib import Path

from dockyard.clock import CLOCK_FILE_VARIABLE


class MovableClock:
    """Give ``env`` to the servers (and CLI runs) whose time the test moves with ``advance``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "clock-offset"
        self.offset = 0.0
        self._write()

    @property
    def env(self) -> dict[str, str]:
        return {CLOCK_FILE_VARIABLE: str(self.path)}

    def advance(self, seconds: float) -> None:
        """Every process given ``env`` sees the wall clock ``seconds`` later from now on."""
        self.offset += seconds
        self._write()

    def _write(self) -> None:
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text(repr(self.offset))
        os.replace(staged, self.path)  # a new file each time: readers see it whole or not at all
