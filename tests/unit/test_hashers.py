"""Live hash state a worker keeps between the chunks of its upload sessions."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from dockyard.registry.digests import Hasher, new_hasher
from dockyard.registry.hashing import HASH_BATCH, BackgroundHasher
from dockyard.registry.ports import UploadSession
from dockyard.registry.uploads import LiveHashers


def session(upload_id: str = "u1", offset: int = 0, algorithm: str = "sha256") -> UploadSession:
    return UploadSession(id=upload_id, repository="test/repo", offset=offset, algorithm=algorithm)


def test_take_returns_the_hasher_kept_at_the_same_offset_and_algorithm() -> None:
    hashers = LiveHashers()
    hasher = new_hasher("sha256")
    hasher.update(b"hello")
    hashers.keep(session(offset=5), hasher)
    assert hashers.take(session(offset=5)) is hasher


def test_take_hands_a_hasher_out_once() -> None:
    hashers = LiveHashers()
    hashers.keep(session(offset=5), new_hasher("sha256"))
    assert hashers.take(session(offset=5)) is not None
    assert hashers.take(session(offset=5)) is None


def test_take_refuses_a_hasher_kept_at_another_offset() -> None:
    hashers = LiveHashers()
    hashers.keep(session(offset=5), new_hasher("sha256"))
    assert hashers.take(session(offset=6)) is None


def test_take_refuses_a_hasher_of_another_algorithm() -> None:
    hashers = LiveHashers()
    hashers.keep(session(offset=5, algorithm="sha256"), new_hasher("sha256"))
    assert hashers.take(session(offset=5, algorithm="sha512")) is None


def test_take_of_an_unknown_session_is_none() -> None:
    assert LiveHashers().take(session("nobody")) is None


def test_drop_forgets_a_session_and_ignores_unknown_ones() -> None:
    hashers = LiveHashers()
    hashers.keep(session("u1"), new_hasher("sha256"))
    hashers.drop("u1")
    hashers.drop("never-kept")
    assert hashers.take(session("u1")) is None


def test_sessions_are_kept_apart() -> None:
    hashers = LiveHashers()
    a, b = new_hasher("sha256"), new_hasher("sha512")
    hashers.keep(session("a", 1, "sha256"), a)
    hashers.keep(session("b", 2, "sha512"), b)
    assert hashers.take(session("b", 2, "sha512")) is b
    assert hashers.take(session("a", 1, "sha256")) is a


def test_keeping_more_than_capacity_evicts_the_oldest() -> None:
    hashers = LiveHashers(capacity=3)
    kept = {f"u{i}": new_hasher("sha256") for i in range(4)}
    for upload_id, hasher in kept.items():
        hashers.keep(session(upload_id), hasher)
    assert hashers.take(session("u0")) is None
    for upload_id in ("u1", "u2", "u3"):
        assert hashers.take(session(upload_id)) is kept[upload_id]


def test_keeping_a_session_again_makes_it_the_newest() -> None:
    hashers = LiveHashers(capacity=2)
    a = new_hasher("sha256")
    hashers.keep(session("a", 0), a)
    hashers.keep(session("b", 0), new_hasher("sha256"))
    hashers.keep(session("a", 10), a)  # a's next chunk
    hashers.keep(session("c", 0), new_hasher("sha256"))
    assert hashers.take(session("b", 0)) is None
    assert hashers.take(session("a", 10)) is a


def test_a_taken_hasher_carries_on_from_the_bytes_it_saw() -> None:
    hashers = LiveHashers()
    hasher = new_hasher("sha512")
    hasher.update(b"first chunk ")
    hashers.keep(session(offset=12, algorithm="sha512"), hasher)
    resumed = hashers.take(session(offset=12, algorithm="sha512"))
    assert resumed is not None
    resumed.update(b"second chunk")
    assert resumed.hexdigest() == hashlib.sha512(b"first chunk second chunk").hexdigest()


CAPACITY = 3
IDS = st.sampled_from(["a", "b", "c", "d", "e"])
OFFSETS = st.integers(0, 3)
ALGORITHMS = st.sampled_from(["sha256", "sha512"])


class LiveHashersMachine(RuleBasedStateMachine):
    """Any sequence of keep, take and drop agrees with a plain ordered dictionary.

    A take consumes the entry whether or not it matches: a hasher that missed bytes is no use.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hashers = LiveHashers(capacity=CAPACITY)
        self.model: OrderedDict[str, tuple[int, str, Hasher]] = OrderedDict()

    @rule(upload_id=IDS, offset=OFFSETS, algorithm=ALGORITHMS)
    def keep(self, upload_id: str, offset: int, algorithm: str) -> None:
        hasher = new_hasher(algorithm)
        self.hashers.keep(session(upload_id, offset, algorithm), hasher)
        self.model.pop(upload_id, None)
        self.model[upload_id] = (offset, algorithm, hasher)
        while len(self.model) > CAPACITY:
            self.model.popitem(last=False)

    @rule(upload_id=IDS, offset=OFFSETS, algorithm=ALGORITHMS)
    def take(self, upload_id: str, offset: int, algorithm: str) -> None:
        entry = self.model.pop(upload_id, None)
        expected = entry[2] if entry and entry[:2] == (offset, algorithm) else None
        assert self.hashers.take(session(upload_id, offset, algorithm)) is expected

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def take_what_was_kept(self, data: st.DataObject) -> None:
        upload_id = data.draw(st.sampled_from(sorted(self.model)))
        offset, algorithm, hasher = self.model.pop(upload_id)
        assert self.hashers.take(session(upload_id, offset, algorithm)) is hasher

    @rule(upload_id=IDS)
    def drop(self, upload_id: str) -> None:
        self.hashers.drop(upload_id)
        self.model.pop(upload_id, None)


LiveHashersMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
test_live_hashers_agree_with_a_model = LiveHashersMachine.TestCase


# -- hashing on a thread, one batch behind ------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=700_000), max_size=12))
def test_background_hashing_sees_every_piece_in_order(sizes: list[int]) -> None:
    pieces = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    async def run() -> str:
        hashing = BackgroundHasher(new_hasher("sha256"))
        for piece in pieces:
            await hashing.update(piece)
        return (await hashing.finish()).hexdigest()

    assert asyncio.run(run()) == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_a_cancelled_update_leaves_the_hasher_whole() -> None:
    """A task cancelled while a batch is on its thread waits for that batch: what the hasher has
    seen is still a prefix of the stream, never a stream with a hole."""
    piece = b"x" * HASH_BATCH

    async def run() -> tuple[str, str]:
        hashing = BackgroundHasher(new_hasher("sha256"))
        given: list[bytes] = []

        async def feed() -> None:
            while True:
                await hashing.update(piece)
                given.append(piece)

        task = asyncio.create_task(feed())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # the piece given when the cancel came is the last one the hasher holds
        hasher = await hashing.finish()
        return hasher.hexdigest(), hashlib.sha256(b"".join([*given, piece])).hexdigest()

    seen, expected = asyncio.run(run())
    assert seen == expected
