"""Digests: ``algorithm:hex``, sha256 and sha512 only (spec: "Content Digests")."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.registry.digests import ALGORITHMS, Digest, check_algorithm, new_hasher
from dockyard.registry.errors import RegistryError
from tests.unit.expect import raises_registry_error

HEX_LENGTH = {"sha256": 64, "sha512": 128}
VALID = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")

algorithms = st.sampled_from(sorted(HEX_LENGTH))


@st.composite
def valid_digests(draw: st.DrawFn) -> str:
    algorithm = draw(algorithms)
    raw = draw(st.binary(min_size=HEX_LENGTH[algorithm] // 2, max_size=HEX_LENGTH[algorithm] // 2))
    return f"{algorithm}:{raw.hex()}"


@st.composite
def edited_digests(draw: st.DrawFn) -> str:
    """A valid digest with one character replaced, removed or put in."""
    text = draw(valid_digests())
    at = draw(st.one_of(st.just(0), st.just(len(text)), st.integers(0, len(text))))
    char = draw(st.sampled_from("0af:AFg-+._ \n\x00é"))
    edit = draw(st.sampled_from(["insert", "replace", "delete"]))
    if edit == "insert":
        return text[:at] + char + text[at:]
    if edit == "replace":
        return text[:at] + char + text[at + 1 :]
    return text[:at] + text[at + 1 :]


def test_registered_algorithms_are_sha256_and_sha512() -> None:
    assert ALGORITHMS == HEX_LENGTH


@given(valid_digests())
def test_digest_round_trips_through_its_string(text: str) -> None:
    digest = Digest.parse(text)
    assert str(digest) == text
    assert f"{digest.algorithm}:{digest.hex}" == text
    assert Digest.parse(str(digest)) == digest


@given(st.binary(max_size=4096), algorithms)
def test_digest_of_data_equals_hashlib(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)
    assert digest.algorithm == algorithm
    assert digest.hex == hashlib.new(algorithm, data).hexdigest()
    assert Digest.parse(str(digest)) == digest


@given(st.binary(max_size=1024))
def test_digest_of_defaults_to_sha256(data: bytes) -> None:
    assert str(Digest.of(data)) == "sha256:" + hashlib.sha256(data).hexdigest()


@given(st.lists(st.binary(max_size=256), max_size=8), algorithms)
def test_new_hasher_fed_in_pieces_equals_digest_of_the_whole(pieces: list[bytes], algorithm: str) -> None:
    hasher = new_hasher(algorithm)
    for piece in pieces:
        hasher.update(piece)
    assert hasher.hexdigest() == Digest.of(b"".join(pieces), algorithm).hex


@given(valid_digests().filter(lambda t: any(c in "abcdef" for c in t.split(":")[1])))
def test_uppercase_hex_is_digest_invalid(text: str) -> None:
    algorithm, encoded = text.split(":")
    with raises_registry_error("DIGEST_INVALID"):
        Digest.parse(f"{algorithm}:{encoded.upper()}")


@given(algorithms, st.text("0123456789abcdef", max_size=200))
def test_hex_of_the_wrong_length_is_digest_invalid(algorithm: str, encoded: str) -> None:
    if len(encoded) == HEX_LENGTH[algorithm]:
        encoded = encoded[:-1]
    with raises_registry_error("DIGEST_INVALID"):
        Digest.parse(f"{algorithm}:{encoded}")


@pytest.mark.parametrize(
    "algorithm", ["md5", "sha1", "sha384", "sha3-256", "blake3", "SHA256", "sha256+b64", "sha-256"]
)
def test_unregistered_algorithm_is_digest_invalid(algorithm: str) -> None:
    with raises_registry_error("DIGEST_INVALID"):
        Digest.parse(f"{algorithm}:{'0' * 64}")
    with raises_registry_error("DIGEST_INVALID"):
        check_algorithm(algorithm)
    with raises_registry_error("DIGEST_INVALID"):
        Digest.of(b"", algorithm)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "sha256",
        "sha256:",
        "sha512:",
        ":" + "0" * 64,
        "sha256::" + "0" * 64,
        "sha256:" + "0" * 64 + ":",
        " sha256:" + "0" * 64,
        "sha256:" + "0" * 64 + " ",
        "sha256:" + "0" * 64 + "\n",
        "sha256:" + "0" * 63 + "\n",
        "sha256:" + "0" * 63 + "g",
        "sha256:" + "0" * 62 + "==",
        "sha256 :" + "0" * 64,
        "sha512:" + "0" * 64,
        "sha256:" + "0" * 128,
        "sha256:" + "0" * 100_000,
    ],
)
def test_malformed_digest_is_digest_invalid(text: str) -> None:
    with raises_registry_error("DIGEST_INVALID"):
        Digest.parse(text)


@given(edited_digests())
def test_digest_is_accepted_exactly_when_it_is_registered_lowercase_hex(text: str) -> None:
    if VALID.fullmatch(text):
        assert str(Digest.parse(text)) == text
    else:
        with raises_registry_error("DIGEST_INVALID"):
            Digest.parse(text)


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_valid_digest_or_digest_invalid(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except RegistryError as exc:
        assert (exc.error.code, exc.status) == ("DIGEST_INVALID", 400)
        return
    assert VALID.fullmatch(text)
    assert str(digest) == text


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_check_algorithm_returns_a_registered_algorithm(algorithm: str) -> None:
    assert check_algorithm(algorithm) == algorithm


@given(st.text(max_size=40).filter(lambda a: a not in HEX_LENGTH))
def test_check_algorithm_rejects_anything_else(algorithm: str) -> None:
    with raises_registry_error("DIGEST_INVALID"):
        check_algorithm(algorithm)


@given(valid_digests(), valid_digests())
def test_digests_compare_by_value(a: str, b: str) -> None:
    assert (Digest.parse(a) == Digest.parse(b)) == (a == b)
    assert len({Digest.parse(a), Digest.parse(b)}) == (1 if a == b else 2)
