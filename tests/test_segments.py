"""`schemas.segments.segment_bounds`, the one rule for where the documents of packed rows begin: against a naive
reference on any ids (hypothesis), its documented example, and the readers that use it agreeing on real rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.export.unshift import unshift_batch
from lossmask.loader.batching import RowView
from lossmask.pipeline.packed import PackedRow, cu_seqlens, packed_rows_to_batch, unpack_batch
from lossmask.pipeline.shift import Row
from lossmask.schemas.segments import segment_bounds


def naive_bounds(rows: list[list[int]]) -> tuple[list[int], list[int]]:
    """The rule read literally: a document begins at a row's first position and wherever the id changes."""
    starts, lengths, at = [], [], 0
    for row in rows:
        for k, segment in enumerate(row):
            if k == 0 or segment != row[k - 1]:
                starts.append(at + k)
                lengths.append(0)
            lengths[-1] += 1
        at += len(row)
    return starts, lengths


# Ids from a small range (so runs repeat, also across rows), negative ones and rows of any length, empty too.
ROWS = st.lists(st.lists(st.integers(-2, 3), max_size=12), max_size=8)


@settings(max_examples=300, deadline=None)
@given(rows=ROWS)
def test_segment_bounds_agrees_with_the_naive_reference(rows):
    flat = np.array([s for row in rows for s in row], dtype=np.int32)
    offsets = np.cumsum([0, *map(len, rows)])
    starts, lengths = segment_bounds(flat, offsets)
    assert (starts.tolist(), lengths.tolist()) == naive_bounds(rows)
    assert starts.dtype == lengths.dtype == np.int64
    for row in rows:  # one row on its own, as cu_seqlens and the loader ask
        alone = naive_bounds([row])
        assert segment_bounds(np.array(row, dtype=np.int32))[1].tolist() == alone[1]
        assert cu_seqlens(np.array(row, dtype=np.int32)).tolist() == [*alone[0], len(row)]
        view = RowView(0, np.zeros(len(row)), np.zeros(len(row)), np.zeros(len(row)), np.zeros(len(row)), np.array(row))
        assert view.document_lengths().tolist() == alone[1]


def test_the_documented_example():
    segments = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    starts, lengths = segment_bounds(segments, np.array([0, 5, 5, 8]))
    assert starts.tolist() == [0, 2, 4, 5, 7] and lengths.tolist() == [2, 2, 1, 2, 1]
    starts, lengths = segment_bounds(segments)
    assert starts.tolist() == [0, 2, 4, 7] and lengths.tolist() == [2, 2, 3, 1]


@pytest.mark.parametrize("offsets", [[0, 3], [1, 4], [0, 2, 5], []])
def test_rows_that_do_not_cover_the_positions_are_refused(offsets):
    with pytest.raises(ValueError, match="row offsets must run from 0 to 4"):
        segment_bounds(np.zeros(4), np.array(offsets))


def test_the_loader_row_of_the_rows_layout_is_one_document_and_an_empty_row_none():
    def view(n: int, segments: list[int] | None) -> RowView:
        ids = np.arange(n)
        return RowView(0, ids, ids, ids, ids, None if segments is None else np.array(segments))

    assert view(5, None).document_lengths().tolist() == [5]
    assert view(0, None).document_lengths().tolist() == []
    assert view(0, []).document_lengths().tolist() == []
    assert view(4, [-1, -1, 7, 7]).document_lengths().tolist() == [2, 2]  # ids need not start at 0


def _document(number: int, n: int) -> Row:
    ids = np.arange(1000 * number, 1000 * number + n + 1, dtype=np.int32)
    return Row(ids[:-1], ids[1:], np.ones(n, np.uint8), np.zeros(n, np.uint8), f"f:{number}", number, 0, 0)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), max_size=6))
def test_every_reader_of_packed_rows_finds_the_documents_that_were_packed(sizes):
    counter = itertools.count()
    rows = [PackedRow([_document(next(counter), n) for n in row]) for row in sizes]
    batch = packed_rows_to_batch(rows)
    packed_lengths = [n for row in sizes for n in row]
    assert unpack_batch(batch).column("num_tokens").to_pylist() == packed_lengths
    assert (unshift_batch(batch).doc_lengths - 1).tolist() == packed_lengths  # each gets its last token back
    per_row = []
    for segments in batch.column("segment_ids").to_pylist():
        n = len(segments)
        per_row += (
            RowView(0, np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.array(segments))
            .document_lengths()
            .tolist()
        )
    assert per_row == packed_lengths
