"""`unshift`: shifted rows (either layout) back to whole documents; the kernel both exports stand on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.export.unshift import unshift, unshift_batch
from lossmask.pipeline.shift import rows_to_batch

documents = st.lists(
    st.lists(st.tuples(st.integers(0, 70_000), st.integers(0, 1)), min_size=2, max_size=9),
    min_size=1,
    max_size=12,
)


def as_docs(raw: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array([t for t, _ in d], dtype=np.int32), np.array([m for _, m in d], dtype=np.uint8)) for d in raw]


@settings(max_examples=60, deadline=None)
@given(raw=documents, sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), packed=st.booleans())
def test_unshift_gives_back_every_document(kit, raw, sizes, packed):
    docs = as_docs(raw)
    rows = [kit.shifted_row(doc, i) for i, doc in enumerate(docs)]
    groups = kit.group_rows(rows, sizes) if packed else [[r] for r in rows]
    batch = kit.packed_batch(groups) if packed else rows_to_batch(rows)

    result = unshift_batch(batch)

    assert result.doc_lengths.tolist() == [t.size for t, _ in docs]
    assert np.diff(result.row_docs).tolist() == [len(g) for g in groups]
    for k, (tokens, trainable) in enumerate(docs):
        a, b = result.doc_offsets[k], result.doc_offsets[k + 1]
        assert result.tokens[a:b].tolist() == tokens.tolist()
        # the first token of a document is never a counted target; the others count as the shard said
        assert result.counted[a:b].tolist() == [0, *trainable[1:].tolist()]
        assert result.labels[a:b].tolist() == [
            t if c else -100 for t, c in zip(tokens, result.counted[a:b], strict=True)
        ]
        assert result.positions[a:b].tolist() == list(range(tokens.size))


@settings(max_examples=40, deadline=None)
@given(raw=documents)
def test_hf_relation_holds_per_row(kit, raw):
    """labels shifted left by one = target_ids where loss_mask, else -100; input_ids = inputs + last target."""
    rows = [kit.shifted_row(doc, i) for i, doc in enumerate(as_docs(raw))]
    result = unshift_batch(rows_to_batch(rows))
    for r, row in enumerate(rows):
        a, b = result.row_offsets[r], result.row_offsets[r + 1]
        labels = result.labels[a:b]
        assert labels[0] == -100
        assert labels[1:].tolist() == np.where(row.loss_mask == 1, row.target_ids, -100).tolist()
        assert result.tokens[a:b].tolist() == [*row.input_ids.tolist(), int(row.target_ids[-1])]


def flat(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0, *[len(r) for r in rows]])
    return offsets, np.array([v for r in rows for v in r], dtype=np.int64)


@pytest.mark.parametrize(
    ("inputs", "targets", "positions", "segments", "message"),
    [
        ([[5, 6], []], [[6, 7], []], [[0, 1], []], None, "row 1 has no positions"),
        ([[5, 9]], [[6, 7]], [[0, 1]], None, "not a shifted document"),
        ([[5, 6]], [[6, 7]], [[1, 2]], None, "do not start at 0"),
        ([[5, 6]], [[6, 7]], [[0, 2]], None, "count up by one"),
        ([[5, 6, 1]], [[6, 7, 2]], [[0, 1, 0]], [[1, 1, 2]], "segment_ids do not start at 0"),
        ([[5, 6, 1]], [[6, 7, 2]], [[0, 1, 0]], [[0, 0, 2]], "segment_ids do not count up by one"),
    ],
)
def test_rows_that_are_not_shifted_documents_are_refused(inputs, targets, positions, segments, message):
    offsets, input_flat = flat(inputs)
    _, target_flat = flat(targets)
    _, position_flat = flat(positions)
    segment_flat = None if segments is None else flat(segments)[1]
    mask = np.ones(input_flat.size, dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        unshift(offsets, input_flat, target_flat, mask, position_flat, segment_flat)


def test_a_new_segment_starts_a_new_document_even_when_positions_continue():
    """Positions that restart define nothing on their own: segment_ids do, and positions must restart with them."""
    offsets, inputs = flat([[5, 6, 1, 2]])
    targets = np.array([6, 7, 2, 3])
    with pytest.raises(ValueError, match="do not start at 0"):
        unshift(offsets, inputs, targets, np.ones(4), np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]))
    result = unshift(offsets, inputs, targets, np.ones(4), np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))
    assert result.tokens.tolist() == [5, 6, 7, 1, 2, 3]
    assert result.labels.tolist() == [-100, 6, 7, -100, 2, 3]
