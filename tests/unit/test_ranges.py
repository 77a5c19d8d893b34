"""``Range`` headers on blob GETs (RFC 9110 section 14.1.2; spec: "Pulling blobs")."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dockyard.http.ranges import parse_range
from dockyard.registry.errors import RegistryError
from tests.unit.expect import raises_registry_error

sizes = st.integers(1, 10**12)
positions = st.integers(0, 10**15)  # at most 16 digits: inside what the header may spell


def assert_unsatisfiable(header: str, size: int) -> None:
    """416 with ``Content-Range: bytes */<size>``, as RFC 9110 section 15.5.17 asks."""
    with raises_registry_error("SIZE_INVALID", 416) as info:
        parse_range(header, size)
    assert info.value.headers == {"Content-Range": f"bytes */{size}"}


def test_no_header_means_the_whole_blob() -> None:
    assert parse_range(None, 10) is None


@given(sizes, positions, positions)
def test_first_last_range_is_clamped_to_the_blob(size: int, first: int, last: int) -> None:
    header = f"bytes={first}-{last}"
    if first <= last and first < size:
        assert parse_range(header, size) == (first, min(last, size - 1))
    else:
        assert_unsatisfiable(header, size)


@given(sizes, positions)
def test_open_ended_range_runs_to_the_last_byte(size: int, first: int) -> None:
    header = f"bytes={first}-"
    if first < size:
        assert parse_range(header, size) == (first, size - 1)
    else:
        assert_unsatisfiable(header, size)


@given(sizes, st.integers(1, 10**15))
def test_suffix_range_is_the_last_n_bytes(size: int, n: int) -> None:
    # asking for more than there is gives the whole blob
    assert parse_range(f"bytes=-{n}", size) == (max(0, size - n), size - 1)


@given(sizes)
def test_empty_suffix_range_is_unsatisfiable(size: int) -> None:
    assert_unsatisfiable("bytes=-0", size)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 1, (0, 0)),
        ("bytes=0-9", 10, (0, 9)),
        ("bytes=0-99", 10, (0, 9)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=9-", 10, (9, 9)),
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-11", 10, (0, 9)),
        ("Bytes=2-3", 10, (2, 3)),  # range units are case-insensitive (RFC 9110 section 14.1)
        ("BYTES=2-3", 10, (2, 3)),
    ],
)
def test_range_examples(header: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=5-4", 10)])
def test_unsatisfiable_examples(header: str, size: int) -> None:
    assert_unsatisfiable(header, size)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=0-1,3-4",
        "bytes=0-1, 3-4",
        "bytes=-1,0-",
        "items=0-1",
        "0-1",
        "=0-1",
        "bytes 0-1",
        "bytes=a-b",
        "bytes=0x1-2",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes=+1-2",
        "bytes=1.0-2",
        "bytes=" + "9" * 40 + "-",
        "bytes=\u0660-\u0665",  # ARABIC-INDIC digits: RFC 9110's DIGIT is ASCII only
        "bytes=\uff10-\uff15",  # FULLWIDTH digits
    ],
)
def test_header_that_is_not_one_byte_range_is_ignored(header: str) -> None:
    assert parse_range(header, 10) is None


@given(st.lists(st.tuples(positions, positions), min_size=2, max_size=4), sizes)
def test_multiple_ranges_are_ignored(ranges: list[tuple[int, int]], size: int) -> None:
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in ranges)
    assert parse_range(header, size) is None


@given(st.text("bytes=0123456789-, \t", max_size=30) | st.text(max_size=30), st.integers(0, 1000))
def test_any_header_gives_a_range_inside_the_blob_or_none_or_416(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RegistryError as exc:
        assert (exc.error.code, exc.status) == ("SIZE_INVALID", 416)
        assert exc.headers == {"Content-Range": f"bytes */{size}"}
        return
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size - 1


@given(st.from_regex(r"bytes=[0-9]{0,4}-[0-9]{0,4}", fullmatch=True), st.integers(1, 10_000))
def test_single_range_header_is_honoured_or_refused_never_ignored(header: str, size: int) -> None:
    assume(header != "bytes=-")
    try:
        result = parse_range(header, size)
    except RegistryError:
        return
    assert result is not None
    assert 0 <= result[0] <= result[1] <= size - 1
