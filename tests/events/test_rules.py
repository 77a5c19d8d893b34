"""The pure rules of delivery: back-off, signatures, which events a sink subscribes to."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dockyard.config import EventSink, Settings
from dockyard.events.delivery import Backoff
from dockyard.events.signing import sign, verify
from dockyard.events.sinks import sink_wants


def test_backoff_doubles_from_the_first_delay_up_to_the_cap_jittered_down_at_most_a_fifth() -> None:
    backoff = Backoff(initial=1.0, cap=60.0, max_attempts=10)
    for attempts, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0), (5000, 60.0)]:
        for _ in range(20):
            assert 0.8 * base <= backoff.delay(attempts) <= base


def test_a_signature_verifies_only_the_exact_body_under_the_same_secret() -> None:
    body = b'{"id":"1"}'
    header = sign(b"k", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(b"k", body, header)
    assert not verify(b"k", body + b" ", header)
    assert not verify(b"other", body, header)
    assert not verify(b"k", body, None)


def test_a_sink_wants_every_type_but_pulls_by_default_and_its_types_without_the_prefix() -> None:
    types, globs = sink_wants(EventSink(name="a", url="http://127.0.0.1:1/"))
    assert "manifest.pushed" in types and "manifest.pulled" not in types and globs == ("**",)
    types, _ = sink_wants(EventSink(name="a", url="http://127.0.0.1:1/", types=["dev.dockyard.tag.deleted"]))
    assert types == {"tag.deleted"}


@pytest.mark.parametrize(
    "sink",
    [
        {"name": "a", "url": "ftp://127.0.0.1/"},
        {"name": "a", "url": "http://127.0.0.1/", "types": ["manifest.exploded"]},
        {"name": "bad name", "url": "http://127.0.0.1/"},
    ],
)
def test_a_bad_sink_is_refused_at_start(sink: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(events={"sinks": [sink]})  # type: ignore[arg-type]


def test_sink_and_rule_names_must_be_unique_and_events_are_on_when_something_wants_them() -> None:
    with pytest.raises(ValidationError):
        Settings(events={"sinks": [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]})  # type: ignore[arg-type]
    assert not Settings().events_enabled
    assert Settings(replication={"rules": [{"name": "b", "url": "http://x"}]}).events_enabled  # type: ignore[arg-type]
    assert not Settings(
        events={"enabled": False, "sinks": [{"name": "a", "url": "http://x/"}]}
    ).events_enabled  # type: ignore[arg-type]
