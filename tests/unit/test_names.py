"""Repository names, tags and references against the spec's expressions (spec: "Pulling manifests")."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.registry.digests import Digest
from dockyard.registry.errors import RegistryError
from dockyard.registry.names import Reference, parse_name, parse_tag
from tests.unit.expect import raises_registry_error

# The spec's expressions, copied verbatim: the tests hold the code to the spec, not to itself.
SPEC_NAME = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
SPEC_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"


def spec_allows_name(text: str) -> bool:
    return len(text) < 256 and re.fullmatch(SPEC_NAME, text) is not None


def spec_allows_tag(text: str) -> bool:
    return re.fullmatch(SPEC_TAG, text) is not None


spec_names = st.from_regex(SPEC_NAME, fullmatch=True).filter(lambda s: len(s) <= 255)

# The same grammar built piece by piece: shorter, quicker names for the tests that corrupt them.
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.one_of(st.sampled_from([".", "_", "__"]), st.integers(1, 3).map(lambda n: "-" * n))
_component = st.tuples(_alnum, st.lists(st.tuples(_separator, _alnum), max_size=3)).map(
    lambda parts: parts[0] + "".join(sep + alnum for sep, alnum in parts[1])
)
valid_names = st.lists(_component, min_size=1, max_size=4).map("/".join)
valid_tags = st.from_regex(SPEC_TAG, fullmatch=True)

# Characters that sit on either side of the spec's rules, so random strings hit the edges often.
NAME_ALPHABET = "ab09._-/A\x00\n é\u0130"
TAG_ALPHABET = "aZ09._-:/@+\x00\n é"

# What no repository name may hold, wherever it appears.
NAME_CORRUPTIONS = ["..", "//", "A", "Z", "\x00", "\n", " ", "é", "\u212a", ":", "@", "\\"]


@st.composite
def corrupted_names(draw: st.DrawFn) -> str:
    name = draw(valid_names)
    bad = draw(st.sampled_from(NAME_CORRUPTIONS))
    at = draw(st.one_of(st.just(0), st.just(len(name)), st.integers(0, len(name))))
    return name[:at] + bad + name[at:]


# ---------------------------------------------------------------------------------------------
# repository names


@settings(max_examples=60)
@given(spec_names)
def test_name_matching_the_spec_is_accepted_unchanged(name: str) -> None:
    assert parse_name(name) == name


@given(valid_names)
def test_name_built_from_the_spec_grammar_is_accepted_unchanged(name: str) -> None:
    assert spec_allows_name(name)
    assert parse_name(name) == name


@given(st.one_of(st.text(NAME_ALPHABET, max_size=24), st.text(max_size=12)))
def test_name_is_accepted_exactly_when_the_spec_allows_it(text: str) -> None:
    if spec_allows_name(text):
        assert parse_name(text) == text
    else:
        with raises_registry_error("NAME_INVALID"):
            parse_name(text)


@given(corrupted_names())
def test_name_with_a_forbidden_sequence_anywhere_is_name_invalid(text: str) -> None:
    with raises_registry_error("NAME_INVALID"):
        parse_name(text)


@given(valid_names)
def test_name_with_a_slash_at_either_end_is_name_invalid(name: str) -> None:
    for text in (f"/{name}", f"{name}/", f"/{name}/"):
        with raises_registry_error("NAME_INVALID"):
            parse_name(text)


@given(st.text(NAME_ALPHABET, max_size=24))
def test_accepted_name_never_escapes_its_directory(text: str) -> None:
    try:
        name = parse_name(text)
    except RegistryError:  # anything else propagates and fails the test
        return
    assert ".." not in name
    assert not name.startswith("/") and not name.endswith("/")
    assert "//" not in name
    assert name.isascii() and name == name.lower()
    assert all(c.isprintable() and not c.isspace() for c in name)


@pytest.mark.parametrize(
    "name",
    ["a" * 255, "/".join(["a"] * 128), "library/ubuntu", "a-b", "a--b", "a__b", "a.b", "a_b/c.d-e"],
)
def test_name_up_to_255_characters_is_accepted(name: str) -> None:
    assert len(name) <= 255
    assert parse_name(name) == name


@given(st.integers(256, 2000))
def test_name_longer_than_255_characters_is_name_invalid(length: int) -> None:
    with raises_registry_error("NAME_INVALID"):
        parse_name("a" * length)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a..b",
        "../etc",
        "a/../b",
        "a/..",
        "/a",
        "a/",
        "a//b",
        "A",
        "library/Ubuntu",
        "a\x00b",
        "caf\u00e9",
        "a___b",
        "a.-b",
        "-a",
        "a-",
        "_a",
        ".a",
        "a b",
        "a\n",
        "a\nb",
        "\na",
        "a\r",
    ],
)
def test_name_breaking_the_spec_is_name_invalid(text: str) -> None:
    with raises_registry_error("NAME_INVALID"):
        parse_name(text)


# ---------------------------------------------------------------------------------------------
# tags


@given(valid_tags)
def test_tag_matching_the_spec_is_accepted_unchanged(tag: str) -> None:
    assert parse_tag(tag) == tag


@given(st.one_of(st.text(TAG_ALPHABET, max_size=20), st.text(max_size=10)))
def test_tag_is_accepted_exactly_when_the_spec_allows_it(text: str) -> None:
    if spec_allows_tag(text):
        assert parse_tag(text) == text
    else:
        with raises_registry_error("MANIFEST_INVALID"):
            parse_tag(text)


@st.composite
def edited_tags(draw: st.DrawFn) -> str:
    """A valid tag with one character put in at its start, its end or anywhere in it."""
    tag = draw(valid_tags)
    extra = draw(st.sampled_from(TAG_ALPHABET))
    at = draw(st.one_of(st.just(0), st.just(len(tag)), st.integers(0, len(tag))))
    return tag[:at] + extra + tag[at:]


@given(edited_tags())
def test_edited_tag_is_accepted_exactly_when_the_spec_allows_it(text: str) -> None:
    if spec_allows_tag(text):
        assert parse_tag(text) == text
    else:
        with raises_registry_error("MANIFEST_INVALID"):
            parse_tag(text)


@given(st.text("aZ09._-", min_size=128, max_size=400))
def test_tag_longer_than_128_characters_is_invalid(tail: str) -> None:
    with raises_registry_error("MANIFEST_INVALID"):
        parse_tag("v" + tail)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_", "a" * 128, "1-2_3.4", "UPPER"])
def test_tag_examples_are_accepted(tag: str) -> None:
    assert parse_tag(tag) == tag


@pytest.mark.parametrize(
    "text", ["", "a" * 129, ".hidden", "-v1", "v1:2", "v/1", "v 1", "v1\n", "v1\x00", "t\u00e4g"]
)
def test_tag_breaking_the_spec_is_invalid(text: str) -> None:
    with raises_registry_error("MANIFEST_INVALID"):
        parse_tag(text)


# ---------------------------------------------------------------------------------------------
# references


sha256_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
sha512_hex = st.binary(min_size=64, max_size=64).map(bytes.hex)
valid_digests = st.one_of(sha256_hex.map("sha256:{}".format), sha512_hex.map("sha512:{}".format))


@given(valid_digests)
def test_reference_in_digest_form_is_a_digest(text: str) -> None:
    ref = Reference.parse(text)
    assert ref.tag is None
    assert ref.digest == Digest.parse(text)
    assert str(ref) == text


@given(valid_tags)
def test_reference_in_tag_form_is_a_tag(text: str) -> None:
    ref = Reference.parse(text)
    assert ref.digest is None
    assert ref.tag == text
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-bad",
        "a" * 129,
        "v1\n",
    ],
)
def test_invalid_tag_reference_is_manifest_invalid(text: str) -> None:
    with raises_registry_error("MANIFEST_INVALID", 400):
        Reference.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha256:",
        ":latest",
        "latest:",
        "sha256:" + "0" * 64 + "\n",
    ],
)
def test_invalid_digest_reference_is_digest_invalid(text: str) -> None:
    with raises_registry_error("DIGEST_INVALID", 400):
        Reference.parse(text)


@given(st.one_of(st.text(TAG_ALPHABET, max_size=20), st.text(max_size=10)))
def test_reference_is_a_tag_or_a_digest_or_manifest_invalid(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except RegistryError as exc:
        expected = "DIGEST_INVALID" if ":" in text else "MANIFEST_INVALID"
        assert (exc.error.code, exc.status) == (expected, 400)
        assert not spec_allows_tag(text)
        return
    assert (ref.tag is None) != (ref.digest is None)
    if ref.tag is not None:
        assert spec_allows_tag(ref.tag)
    assert str(ref) == text
