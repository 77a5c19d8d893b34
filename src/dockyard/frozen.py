"""The settings as plain values, for the workers: what ``dockyard serve`` hands each worker.

The settings are parsed and validated once, with pydantic, in the process that reads them
(config.py). A worker only reads them, so it gets them as these plain objects and never imports
pydantic: ~10 MiB of RSS a worker (pydantic, pydantic-settings and pydantic-core's library).
This module imports nothing that is not already in every Python process.
"""

from __future__ import annotations

from typing import Any


class FrozenSettings:
    """A settings model's fields (and its properties' values) as read-only attributes."""

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "__dict__", dict(values))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"the settings are read-only ({name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the settings are read-only ({name})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrozenSettings) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # like a pydantic model: compared by value

    def __repr__(self) -> str:
        return f"FrozenSettings({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    def __reduce__(self) -> tuple[type[FrozenSettings], tuple[dict[str, Any]]]:
        return FrozenSettings, (self.__dict__,)


class Secret:
    """A secret setting: its value only on asking (``get_secret_value``), as pydantic's
    ``SecretStr``; its repr hides it (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __repr__(self) -> str:
        return f"Secret('{self}')"

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return Secret, (self._value,)
