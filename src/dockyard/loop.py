"""The event loop every dockyard process runs on: uvloop where it is installed (its TLS transport
and its sockets are C, not Python), the stock asyncio loop elsewhere or when asked for."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

T = TypeVar("T")
EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
CHOICES: tuple[str, ...] = get_args(EventLoopChoice)
ENV = "DOCKYARD_EVENT_LOOP"  # the setting event_loop, also for commands that read no settings


class LoopUnavailable(RuntimeError):
    """``event_loop: uvloop`` where uvloop is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: EventLoopChoice = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of the kind ``choice`` names (``auto``: uvloop if installed)."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError as exc:
        raise LoopUnavailable(f"event_loop: uvloop, but uvloop cannot be imported: {exc}") from exc
    return uvloop.new_event_loop


def choice_from_env() -> EventLoopChoice:
    """``DOCKYARD_EVENT_LOOP``, for the commands that read no settings file (the client)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise LoopUnavailable(f"{ENV}={value!r}: use one of {', '.join(CHOICES)}")
    return value  # type: ignore[return-value]


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (None: ``DOCKYARD_EVENT_LOOP``, or auto)."""
    try:
        factory = loop_factory(choice_from_env() if choice is None else choice)
    except BaseException:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``uvloop`` or ``asyncio``: which loop runs (this thread's, unless one is given)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
