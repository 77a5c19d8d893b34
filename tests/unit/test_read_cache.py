"""The per-worker read cache of PostgreSQL nodes: what a notification makes it forget, and when
an answer may be kept (the cluster-wide behaviour is tested in tests/multinode/test_cache.py)."""

from __future__ import annotations

from dockyard.metadata.pgcache import ReadCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _filled(clock: Clock | None = None) -> ReadCache:
    cache = ReadCache(ttl=5.0, clock=clock or Clock())
    cache.enabled = True
    for repo in ("a", "b"):
        for key in (("t", "latest"), ("t", "v1"), ("m", "sha256:1"), ("b", "sha256:2")):
            cache.put(repo, key, f"{repo} {key}", cache.ticket(repo), 100.0)
    return cache


def _hits(cache: ReadCache, repo: str) -> set[tuple[str, str]]:
    keys = (("t", "latest"), ("t", "v1"), ("m", "sha256:1"), ("b", "sha256:2"))
    return {key for key in keys if cache.get(repo, key)[0]}


ALL = {("t", "latest"), ("t", "v1"), ("m", "sha256:1"), ("b", "sha256:2")}


def test_a_moved_tag_forgets_that_tag_only() -> None:
    cache = _filled()
    cache.apply("t a latest")
    assert _hits(cache, "a") == ALL - {("t", "latest")}
    assert _hits(cache, "b") == ALL


def test_a_changed_manifest_forgets_it_and_the_repositorys_tags() -> None:
    cache = _filled()
    cache.apply("m a sha256:1")
    assert _hits(cache, "a") == {("b", "sha256:2")}
    assert _hits(cache, "b") == ALL


def test_a_changed_link_forgets_that_link_only() -> None:
    cache = _filled()
    cache.apply("b b sha256:2")
    assert _hits(cache, "a") == ALL
    assert _hits(cache, "b") == ALL - {("b", "sha256:2")}


def test_a_repository_or_everything_at_once() -> None:
    cache = _filled()
    cache.apply("r a")
    assert _hits(cache, "a") == set() and _hits(cache, "b") == ALL
    cache.apply("*")
    assert _hits(cache, "b") == set()


def test_an_answer_read_before_a_change_is_not_kept_after_it() -> None:
    cache = _filled()
    ticket = cache.ticket("a")  # a read starts...
    cache.apply("t a other")  # ...a change in the repository is heard meanwhile...
    cache.put("a", ("t", "new"), "old answer", ticket, 100.0)  # ...its answer comes back
    assert cache.get("a", ("t", "new")) == (False, None)
    ticket = cache.ticket("a")
    cache.apply("t b latest")  # another repository's change does not matter
    cache.put("a", ("t", "new"), "answer", ticket, 100.0)
    assert cache.get("a", ("t", "new")) == (True, "answer")


def test_answers_expire_a_ttl_after_the_read_started() -> None:
    clock = Clock()
    cache = _filled(clock)
    clock.now = 104.9
    assert _hits(cache, "a") == ALL
    clock.now = 105.0
    assert _hits(cache, "a") == set()


def test_nothing_is_kept_while_not_listening_or_across_a_flush() -> None:
    cache = ReadCache(ttl=5.0, clock=Clock())
    cache.put("a", ("t", "latest"), "x", cache.ticket("a"), 100.0)
    assert cache.get("a", ("t", "latest")) == (False, None)
    cache.enabled = True
    ticket = cache.ticket("a")
    cache.flush()  # the listening connection came back
    cache.put("a", ("t", "latest"), "x", ticket, 100.0)
    assert cache.get("a", ("t", "latest")) == (False, None)
