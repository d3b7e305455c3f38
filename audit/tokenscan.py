"""Lints that read each row's tokens in order: what ends an assistant turn, and what the turn held before it.

These need "the token before this one" within a row, which is awkward in polars but a few vectorized numpy
steps over the flat Arrow buffers of a record batch: no Python loop over tokens, bounded memory per batch.

Terms, per target position of a row (classes from `token_class`, counted = `loss_mask`):
- content: a class the assistant writes before its end-of-turn (answer, reasoning, tool call, markup), counted
  or not: a class left out of training (`--no-train-tool-calls`, `--no-train-reasoning`) is still part of the
  turn the model reads, so it neither ends the turn nor leaves it empty;
- a turn's end: a run of END_OF_TURN targets; its anchor is the target right before the run.

Rules:
- eot_not_counted: an END_OF_TURN target is not counted although the content right before it is: the model is
  taught the answer but never to stop after it.
- eot_missing: a run of content holding counted content is followed by something other than END_OF_TURN (or
  ends the row without truncation): the answer has no end-of-turn marker at all.
- empty_assistant: a counted END_OF_TURN whose turn has no content, or only whitespace: the model is taught to
  answer with nothing.

Besides the rules, `tally_batch` counts one class per row, in the context and counted, with its first position in
the context: whether reasoning is ever trained is a question about the whole dataset, asked of these tallies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..schemas.classes import TokenClass
from ..schemas.shards import RowFlag
from .palette import CONTENT_CLASSES

_CONTENT_TABLE = np.zeros(256, dtype=bool)  # class id -> is content
_CONTENT_TABLE[[int(c) for c in CONTENT_CLASSES]] = True
_EOT = np.uint8(TokenClass.END_OF_TURN)
RULES = ("eot_not_counted", "eot_missing", "empty_assistant")
COLUMNS = ["token_class", "loss_mask", "target_ids", "flags"]  # what the scan reads


@dataclass
class ClassTally:
    """Per row, for one class: its targets in the context (not counted), its counted targets, and the position of
    its first target in the context (-1 when none)."""

    context: np.ndarray
    counted: np.ndarray
    first_context: np.ndarray

    @classmethod
    def join(cls, parts: list[ClassTally]) -> ClassTally:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty.copy(), empty.copy())
        return cls(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("context", "counted", "first_context"))
        )


@dataclass
class ScanResult:
    """Per row: the first target position where each rule fires, or -1; and the reasoning tally."""

    first: dict[str, np.ndarray] = field(default_factory=dict)
    reasoning: ClassTally = field(default_factory=lambda: ClassTally.join([]))

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
    flags = batch.column("flags").to_numpy(zero_copy_only=False).astype(np.int64)
    out = {rule: np.full(n_rows, -1, dtype=np.int64) for rule in RULES}
    n = cls.size
    if n == 0:
        return out
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    filled = lengths > 0
    row_start = np.repeat(offsets[:-1].astype(np.int32), lengths)
    first_in_row = np.zeros(n, dtype=bool)
    first_in_row[offsets[:-1][filled]] = True
    last_in_row = np.zeros(n, dtype=bool)
    last_in_row[offsets[1:][filled] - 1] = True

    counted = mask.astype(bool)
    is_eot = cls == _EOT
    written = _CONTENT_TABLE[cls]  # content, counted or not
    content = written & counted  # counted content

    # The anchor of a position: the last non-END_OF_TURN position at or before it, within the row.
    anchor = np.maximum.accumulate(np.where(is_eot, np.int32(-1), np.arange(n, dtype=np.int32)))
    anchor_in_row = anchor >= row_start
    anchor_content = anchor_in_row & content[np.maximum(anchor, 0)]
    anchor_written = anchor_in_row & written[np.maximum(anchor, 0)]

    _record(out["eot_not_counted"], offsets, is_eot & ~counted & anchor_content)

    # The start of a run of END_OF_TURN targets: the first one, or one right after a non-END_OF_TURN target.
    run_start = is_eot.copy()
    run_start[1:] &= ~is_eot[:-1] | first_in_row[1:]
    empty = run_start & counted & ~anchor_written
    if whitespace is not None:
        candidates = np.flatnonzero(run_start & counted & anchor_written)
        blank = _blank_runs(anchor[candidates], row_start, written, targets, whitespace)
        empty[candidates[blank]] = True
    _record(out["empty_assistant"], offsets, empty)

    # The end of a run of content that holds counted content, and what follows it: an END_OF_TURN target, or a
    # cut row.
    written_start = written.copy()
    written_start[1:] &= ~written[:-1] | first_in_row[1:]
    run_end = written.copy()
    run_end[:-1] &= ~written[1:] | last_in_row[:-1]
    starts = np.flatnonzero(written_start)  # run k spans starts[k] .. its end; ids found by search, not per position
    trained_run = np.zeros(starts.size, dtype=bool)
    trained_run[np.searchsorted(starts, np.flatnonzero(content), side="right") - 1] = True
    ends = np.flatnonzero(run_end)
    run_end[ends[~trained_run[np.searchsorted(starts, ends, side="right") - 1]]] = False
    next_eot = np.zeros(n, dtype=bool)
    next_eot[:-1] = is_eot[1:]
    missing = run_end & ~last_in_row & ~next_eot
    at_end = np.flatnonzero(run_end & last_in_row)
    rows = np.searchsorted(offsets, at_end, side="right") - 1
    cut = int(RowFlag.TRUNCATED | RowFlag.WINDOW)  # a row cut to fit (or one window of a longer example)
    missing[at_end[(flags[rows] & cut) == 0]] = True
    _record(out["eot_missing"], offsets, missing)
    return out


def tally_batch(batch: pa.RecordBatch, cls: TokenClass) -> ClassTally:
    """The targets of class `cls` in each row of one record batch: in the context, counted, first in the context."""
    offsets, classes = _list_parts(batch.column("token_class"))
    _, mask = _list_parts(batch.column("loss_mask"))
    offsets = offsets.astype(np.int64)
    n_rows = batch.num_rows
    of_class = classes == np.uint8(cls)
    counted = mask.astype(bool)
    in_context = of_class & ~counted
    first_context = np.full(n_rows, -1, dtype=np.int64)
    _record(first_context, offsets, in_context)
    return ClassTally(
        context=_per_row(offsets, in_context, n_rows),
        counted=_per_row(offsets, of_class & counted, n_rows),
        first_context=first_context,
    )


def _per_row(offsets: np.ndarray, hits: np.ndarray, n_rows: int) -> np.ndarray:
    """How many hits each row holds."""
    rows = np.searchsorted(offsets, np.flatnonzero(hits), side="right") - 1
    return np.bincount(rows, minlength=n_rows).astype(np.int64)


def _blank_runs(
    ends: np.ndarray, row_start: np.ndarray, content: np.ndarray, targets: np.ndarray, whitespace: np.ndarray
) -> np.ndarray:
    """For content runs ending at `ends`: whether every token of the run is whitespace.

    Walks back from the end of all runs at once and stops a run at its first solid token, which for real
    answers is almost always the last one, so this takes a few vectorized steps, not one per token.
    """
    blank = np.zeros(ends.size, dtype=bool)
    active = np.arange(ends.size)
    position = ends.astype(np.int64)
    while active.size:
        ids = np.clip(targets[position], 0, whitespace.size - 1)
        keep = whitespace[ids]  # a solid token ends the walk: the run is not blank
        active, position = active[keep], position[keep]
        previous = position - 1
        done = (previous < row_start[position]) | ~content[np.maximum(previous, 0)]
        blank[active[done]] = True
        active, position = active[~done], previous[~done]
    return blank


def _record(first: np.ndarray, offsets: np.ndarray, hits: np.ndarray) -> None:
    """Set first[row] = the row-relative position of its first hit (positions ascend, so keep the smallest)."""
    positions = np.flatnonzero(hits)
    if positions.size == 0:
        return
    rows = np.searchsorted(offsets, positions, side="right") - 1
    unique_rows, first_index = np.unique(rows, return_index=True)
    first[unique_rows] = positions[first_index] - offsets[unique_rows]


CHUNK_POSITIONS = 4_000_000  # batches are merged up to about this many targets: numpy's per-call cost amortizes


def _chunks(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches, merged into larger ones (shards hold batches of ~1024 rows), in order."""
    group: list[pa.RecordBatch] = []
    positions = 0
    for batch in batches:
        group.append(batch)
        positions += len(batch.column("token_class").values)
        if positions >= CHUNK_POSITIONS:
            yield pa.Table.from_batches(group).combine_chunks().to_batches()[0]
            group, positions = [], 0
    if group:
        yield from pa.Table.from_batches(group).combine_chunks().to_batches()[:1]


def scan(batches: Iterable[pa.RecordBatch], whitespace: np.ndarray | None) -> ScanResult:
    parts: dict[str, list[np.ndarray]] = {rule: [] for rule in RULES}
    reasoning: list[ClassTally] = []
    for batch in _chunks(batches):
        for rule, first in scan_batch(batch, whitespace).items():
            parts[rule].append(first)
        reasoning.append(tally_batch(batch, TokenClass.REASONING))
    return ScanResult(
        {rule: np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64) for rule, chunks in parts.items()},
        ClassTally.join(reasoning),
    )


def whitespace_table(tokenizer: object) -> np.ndarray:
    """For each token id, whether it decodes (alone) to whitespace or nothing."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # type: ignore[attr-defined]
    texts = tokenizer.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)  # type: ignore[attr-defined]
    return np.fromiter((not text.strip() for text in texts), dtype=bool, count=vocab_size)
