"""Reliability suite: prints the numbers the suite measured (inputs generated, requests sent)."""

from __future__ import annotations

import pytest

from tests.reliability.support import STATS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS:
        return
    terminalreporter.section("reliability numbers")
    for key, value in sorted(STATS.items()):
        terminalreporter.write_line(f"{key}: {value}")
