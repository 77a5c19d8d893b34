"""Chunk ``Content-Range`` and the upload ``Range`` header (spec: "Pushing a blob in chunks")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.registry.errors import RegistryError
from dockyard.registry.uploads import ChunkRange, range_header
from tests.unit.expect import raises_registry_error

positions = st.integers(0, 10**18)  # at most 19 digits
prefixes = st.sampled_from(["", "bytes ", "bytes="])
totals = st.sampled_from(["", "/*"]) | st.integers(0, 10**18).map("/{}".format)


@st.composite
def ordered_pairs(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(positions)
    end = draw(st.integers(start, 10**18))
    return start, end


@given(ordered_pairs())
def test_chunk_range_is_start_and_end_inclusive(pair: tuple[int, int]) -> None:
    start, end = pair
    chunk = ChunkRange.parse(f"{start}-{end}")
    assert chunk == ChunkRange(start, end)
    assert chunk.length == end - start + 1


@given(ordered_pairs(), prefixes, totals)
def test_chunk_range_accepts_the_bytes_unit_and_a_total(
    pair: tuple[int, int], prefix: str, total: str
) -> None:
    start, end = pair
    assert ChunkRange.parse(f"{prefix}{start}-{end}{total}") == ChunkRange(start, end)


@given(ordered_pairs(), st.sampled_from([" ", "\t", "  "]))
def test_chunk_range_ignores_surrounding_whitespace(pair: tuple[int, int], blank: str) -> None:
    start, end = pair
    assert ChunkRange.parse(f"{blank}{start}-{end}{blank}") == ChunkRange(start, end)


@given(ordered_pairs().filter(lambda p: p[0] < p[1]), prefixes)
def test_chunk_range_ending_before_it_starts_is_416(pair: tuple[int, int], prefix: str) -> None:
    start, end = pair
    with raises_registry_error("BLOB_UPLOAD_INVALID", 416):
        ChunkRange.parse(f"{prefix}{end}-{start}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-",
        "1-",
        "-1",
        "a-b",
        "1-2-3",
        "1 - 2",
        "+1-2",
        "0x1-2",
        "1.0-2",
        "1-2/",
        "1-2/x",
        "bytes 1-",
        "bytes1-2",
        "bites 1-2",
        "1-2,3-4",
        "9" * 20 + "-" + "9" * 20,
        "\u0660-\u0665",  # ARABIC-INDIC digits: Content-Range numbers are ASCII digits
        "\uff10-\uff15",  # FULLWIDTH digits
    ],
)
def test_malformed_chunk_range_is_blob_upload_invalid(text: str) -> None:
    with raises_registry_error("BLOB_UPLOAD_INVALID", 400):
        ChunkRange.parse(text)


@given(st.text("bytes =0123456789-/*", max_size=30) | st.text(max_size=30))
def test_any_content_range_is_an_ordered_range_or_blob_upload_invalid(text: str) -> None:
    try:
        chunk = ChunkRange.parse(text)
    except RegistryError as exc:
        assert exc.error.code == "BLOB_UPLOAD_INVALID"
        assert exc.status in (400, 416)
        return
    assert 0 <= chunk.start <= chunk.end
    assert chunk.length >= 1
    assert text.isascii()


# ---------------------------------------------------------------------------------------------
# Range header of an upload session


@given(st.integers(0, 10**18))
def test_range_header_names_the_last_staged_byte(offset: int) -> None:
    assert range_header(offset) == f"0-{offset - 1}"


def test_range_header_of_an_empty_session_is_not_0_0() -> None:
    assert range_header(0) == "0--1"
    assert range_header(1) == "0-0"


@given(st.integers(1, 10**18))
def test_range_header_parses_back_to_the_staged_bytes(offset: int) -> None:
    chunk = ChunkRange.parse(range_header(offset))
    assert chunk == ChunkRange(0, offset - 1)
    assert chunk.length == offset
