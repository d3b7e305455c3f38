"""Lints that read each row's tokens in order: what ends an assistant turn, and what the turn held before it.

These need "the token before this one" within a row, which is awkward in polars but a few vectorized numpy
steps over the flat Arrow buffers of a record batch: no Python loop over tokens, bounded memory per batch.

Terms, per target position of a row (classes from `token_class`, counted = `loss_mask`):
- content: a class the assistant writes before its end-of-turn (answer, reasoning, tool call, markup);
- a turn's end: a run of END_OF_TURN targets; its anchor is the target right before the run.

Rules:
- eot_not_counted: an END_OF_TURN target is not counted although the content right before it is: the model is
  taught the answer but never to stop after it.
- eot_missing: a run of counted content is followed by something other than END_OF_TURN (or ends the row
  without truncation): the answer has no end-of-turn marker at all.
- empty_assistant: a counted END_OF_TURN whose turn has no counted content, or only whitespace: the model is
  taught to answer with nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..schemas.classes import TokenClass
from ..schemas.shards import RowFlag
from .palette import CONTENT_CLASSES

_CONTENT = np.array(sorted(int(c) for c in CONTENT_CLASSES), dtype=np.uint8)
_EOT = np.uint8(TokenClass.END_OF_TURN)
RULES = ("eot_not_counted", "eot_missing", "empty_assistant")


@dataclass
class ScanResult:
    """Per row: the first target position where each rule fires, or -1."""

    first: dict[str, np.ndarray] = field(default_factory=dict)

    def hits(self, rule: str) -> np.ndarray:
        return self.first[rule] >= 0


def _list_parts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0, values) of a list column, honoring a sliced array."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    start, end = int(offsets[0]), int(offsets[-1])
    return offsets - start, values[start:end]


def scan_batch(batch: pa.RecordBatch, whitespace: np.ndarray | None) -> dict[str, np.ndarray]:
    """The rules over one record batch. `whitespace[id]` says a token decodes to whitespace only (or None)."""
    n_rows = batch.num_rows
    offsets, cls = _list_parts(batch.column("token_class"))
    _, mask = _list_parts(batch.column("loss_mask"))
    _, targets = _list_parts(batch.column("target_ids"))
    flags = batch.column("flags").to_numpy(zero_copy_only=False)
    out = {rule: np.full(n_rows, -1, dtype=np.int64) for rule in RULES}
    n = cls.size
    if n == 0:
        return out
    lengths = np.diff(offsets)
    row_of = np.repeat(np.arange(n_rows), lengths)
    row_start = offsets[:-1][row_of]
    row_end = offsets[1:][row_of]
    index = np.arange(n)

    counted = mask.astype(bool)
    is_eot = cls == _EOT
    content = np.isin(cls, _CONTENT) & counted  # counted content

    # The anchor of a position: the last non-END_OF_TURN position at or before it, within the row.
    anchor = np.maximum.accumulate(np.where(is_eot, -1, index))
    has_anchor = anchor >= row_start
    safe_anchor = np.where(has_anchor, anchor, 0)
    anchor_content = has_anchor & content[safe_anchor]

    _record(out["eot_not_counted"], row_of, offsets, is_eot & ~counted & anchor_content)

    # The start of a run of END_OF_TURN targets: the first one, or one right after a non-END_OF_TURN target.
    previous_eot = np.zeros(n, dtype=bool)
    previous_eot[1:] = is_eot[:-1]
    run_start = is_eot & ((index == row_start) | ~previous_eot)
    empty = run_start & counted & ~anchor_content
    if whitespace is not None:
        # Counted content made only of whitespace: find where the content run that ends at the anchor begins.
        content_start = np.maximum.accumulate(np.where(content, 0, index + 1))
        safe_ids = np.clip(targets, 0, whitespace.size - 1)
        solid = np.concatenate([[0], np.cumsum(~whitespace[safe_ids], dtype=np.int64)])
        begin = np.maximum(content_start[safe_anchor], row_start)
        blank = (solid[safe_anchor + 1] - solid[begin]) == 0
        empty |= run_start & counted & anchor_content & blank
    _record(out["empty_assistant"], row_of, offsets, empty)

    # The end of a run of counted content, and what follows it.
    next_content = np.zeros(n, dtype=bool)
    next_content[:-1] = content[1:]
    last_in_row = index == row_end - 1
    run_end = content & (last_in_row | ~next_content)
    following = np.minimum(index + 1, n - 1)
    truncated = (flags.astype(np.int64) & int(RowFlag.TRUNCATED)) != 0
    missing = run_end & np.where(last_in_row, ~truncated[row_of], ~is_eot[following])
    _record(out["eot_missing"], row_of, offsets, missing)
    return out


def _record(first: np.ndarray, row_of: np.ndarray, offsets: np.ndarray, hits: np.ndarray) -> None:
    """Set first[row] = the row-relative position of its first hit (positions ascend, so keep the smallest)."""
    positions = np.flatnonzero(hits)
    if positions.size == 0:
        return
    rows = row_of[positions]
    unique_rows, first_index = np.unique(rows, return_index=True)
    first[unique_rows] = positions[first_index] - offsets[unique_rows]


def scan(batches: Iterable[pa.RecordBatch], whitespace: np.ndarray | None) -> ScanResult:
    parts: dict[str, list[np.ndarray]] = {rule: [] for rule in RULES}
    for batch in batches:
        for rule, first in scan_batch(batch, whitespace).items():
            parts[rule].append(first)
    return ScanResult(
        {rule: np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64) for rule, chunks in parts.items()}
    )


def whitespace_table(tokenizer: object) -> np.ndarray:
    """For each token id, whether it decodes (alone) to whitespace or nothing."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # type: ignore[attr-defined]
    texts = tokenizer.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)  # type: ignore[attr-defined]
    return np.fromiter((not text.strip() for text in texts), dtype=bool, count=vocab_size)
