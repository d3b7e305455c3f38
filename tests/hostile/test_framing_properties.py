"""`framing.split_records` against references simple enough to be obviously right: JSONL lines are what
`bytes.split(b"\\n")` gives (blank lines skipped, the rest numbered as the file numbers them), JSON array items
are what `json.loads` gives, and neither depends on where the stream's chunks happen to end (gzip hands out
pieces of any size)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossmask.pipeline.framing import BOM, Piece, split_records

BLANK = b" \t\r\n\f\v"


def reader(data: bytes, sizes: list[int]):
    """A `read(n)` that returns pieces of the given sizes in turn (at most n), like a decompressor may."""
    position, turn = 0, 0

    def read(n: int) -> bytes:
        nonlocal position, turn
        size = min(n, sizes[turn % len(sizes)])
        turn += 1
        piece = data[position : position + size]
        position += len(piece)
        return piece

    return read


def reference_lines(data: bytes, max_bytes: int) -> list[tuple[int, bytes | None, int]]:
    """(line, bytes or None when over max_bytes, size) of each line that is not blank."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    out = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip(BLANK):
            out.append((number, line if len(line) <= max_bytes else None, len(line)))
    return out


def as_tuples(pieces: list[Piece]) -> list[tuple[int, bytes | None, int]]:
    assert all(p.error is None and p.item is None for p in pieces), pieces
    return [(p.line, p.data, p.size) for p in pieces]


# Bytes that make lines interesting: newlines, every blank JSON and `bytes.strip` know, a BOM's bytes, brackets.
_LINE_BYTES = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r\n", b" ", b"\t", b"\f", b"\v", b"\r", BOM, b"[", b"{}", b'"', b"\\"]),
        st.binary(min_size=1, max_size=12),
    ),
    max_size=60,
).map(b"".join)
_SIZES = st.lists(st.integers(1, 40), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_LINE_BYTES, bom=st.booleans(), sizes=_SIZES, max_bytes=st.integers(0, 30))
def test_lines_are_those_of_a_plain_split_whatever_the_chunks(body, bom, sizes, max_bytes):
    if body.removeprefix(BOM).lstrip(b" \t\r\n")[:1] == b"[":
        body = b"x" + body  # an array is the other property's
    data = (BOM if bom else b"") + body
    expected = reference_lines(data, max_bytes)
    assert as_tuples(list(split_records(reader(data, sizes), max_bytes, arrays=True))) == expected
    assert as_tuples(list(split_records(reader(data, [1 << 20]), max_bytes, arrays=False))) == expected


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.integers(0, 300), max_size=20), sizes=_SIZES, max_bytes=st.integers(0, 200))
def test_long_blank_lines_are_blank_across_chunks(lines, sizes, max_bytes):
    """Lines of only blanks, many longer than max_bytes and spread over chunks, are skipped like short ones."""
    data = b"".join(b" " * n + (b"{}" if n % 3 == 0 else b"") + b"\n" for n in lines)
    assert as_tuples(list(split_records(reader(data, sizes), max_bytes, arrays=False))) == reference_lines(
        data, max_bytes
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\[]{},: \n\t\u00e9\U0001f600'), max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(_JSON, max_size=8),
    indent=st.sampled_from([None, 1, 2]),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    sizes=_SIZES,
)
def test_array_items_are_what_json_loads_gives(items, indent, ascii_only, bom, sizes):
    text = json.dumps(items, indent=indent, ensure_ascii=ascii_only).encode("utf-8")
    data = (BOM if bom else b"") + b"\n" + text + b"\n"
    pieces = list(split_records(reader(data, sizes), 1 << 20, arrays=True))
    assert all(p.error is None for p in pieces), pieces
    assert [json.loads(p.data) for p in pieces] == items
    assert [p.item for p in pieces] == list(range(len(items)))
    if indent is None:
        assert {p.line for p in pieces} <= {2}
    else:  # each item on lines of its own, the first after the bracket's
        heights = [json.dumps(item, indent=indent).count("\n") + 1 for item in items]
        assert [p.line for p in pieces] == [3 + sum(heights[:k]) for k in range(len(items))]


@settings(max_examples=100, deadline=None)
@given(items=st.lists(_JSON, min_size=1, max_size=8), sizes=_SIZES, max_bytes=st.integers(1, 60))
def test_array_items_one_per_line_have_their_line_and_size(items, sizes, max_bytes):
    """Laid out one per line, item k starts on line k + 2 and is its own bytes long (the last one with the
    newline before the closing bracket); those over max_bytes have no data, only their size."""
    encoded = [json.dumps(item).encode() for item in items]
    data = b"[\n" + b",\n".join(encoded) + b"\n]\n"
    pieces = list(split_records(reader(data, sizes), max_bytes, arrays=True))
    sizes_expected = [len(e) for e in encoded[:-1]] + [len(encoded[-1]) + 1]
    assert [(p.line, p.item, p.size) for p in pieces] == [(k + 2, k, size) for k, size in enumerate(sizes_expected)]
    for piece, item, size in zip(pieces, items, sizes_expected, strict=True):
        if size > max_bytes:
            assert piece.data is None
        else:
            assert json.loads(piece.data) == item


@given(data=st.binary(max_size=200), sizes=_SIZES)
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise_and_arrays_end_or_break_once(data, sizes):
    """Any bytes at all: pieces come out (no exception), and at most one says the structure broke, last."""
    for arrays in (True, False):
        pieces = list(split_records(reader(b"[" + data if arrays else data, sizes), 64, arrays=arrays))
        errors = [i for i, p in enumerate(pieces) if p.error is not None]
        assert errors in ([], [len(pieces) - 1])
