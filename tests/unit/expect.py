"""Assertions shared by the unit tests: a protocol error is judged by what a client sees."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dockyard.registry.errors import RegistryError


@contextmanager
def raises_registry_error(code: str, status: int = 400) -> Iterator[pytest.ExceptionInfo[RegistryError]]:
    """Expect a ``RegistryError`` with the spec's error ``code`` and the HTTP ``status``."""
    with pytest.raises(RegistryError) as info:
        yield info
    assert (info.value.error.code, info.value.status) == (code, status), info.value
