"""Shifted shard rows -> whole unshifted documents, vectorized over a record batch. Both exports build on it.

A shard row holds one document (rows layout) or several (packed layout, one per run of equal `segment_ids`),
each shifted on its own: `input_ids = t[:-1]`, `target_ids = t[1:]`, `loss_mask = m[1:]`. Every document d of
n_d positions comes back as its n_d + 1 tokens:

    tokens    = input_ids + [target_ids[-1]]
    counted   = [0] + loss_mask                     1 where the token is a target that counts
    labels    = [-100] + [target if counted else -100]
    positions = position_ids + [position_ids[-1] + 1]

so a row of D documents and n positions becomes n + D tokens. Nothing is guessed: the rows are checked to be
shifted documents (each input token equals the previous target, positions start at 0 and count up by one,
segments count up from 0), and a row that is not raises `ValueError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import SetupError
from ..loader.shards import ShardSet
from ..schemas.exports import IGNORE_INDEX
from ..schemas.segments import segment_bounds

POSITION_COLUMNS = ("input_ids", "target_ids", "loss_mask", "position_ids")


@dataclass(frozen=True)
class Unshifted:
    """The documents of a batch of rows, unshifted and concatenated in order."""

    tokens: np.ndarray  # int32 [n + D]
    counted: np.ndarray  # uint8 [n + D]: 1 where tokens[j] is a counted target
    labels: np.ndarray  # int32 [n + D]: tokens where counted, else -100
    positions: np.ndarray  # int32 [n + D]
    doc_offsets: np.ndarray  # int64 [D + 1]: document d is tokens[doc_offsets[d]:doc_offsets[d + 1]]
    row_docs: np.ndarray  # int64 [R + 1]: row r holds documents row_docs[r]:row_docs[r + 1]

    @property
    def row_offsets(self) -> np.ndarray:
        """Row r is tokens[row_offsets[r]:row_offsets[r + 1]]."""
        return self.doc_offsets[self.row_docs]

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_offsets)


def unshift(
    row_offsets: np.ndarray,
    input_ids: np.ndarray,
    target_ids: np.ndarray,
    loss_mask: np.ndarray,
    position_ids: np.ndarray,
    segment_ids: np.ndarray | None = None,
) -> Unshifted:
    """Unshift the rows whose positions are `[row_offsets[r], row_offsets[r + 1])` of the flat columns."""
    row_offsets = np.asarray(row_offsets, dtype=np.int64)
    n = int(row_offsets[-1] - row_offsets[0]) if row_offsets.size else 0
    base = int(row_offsets[0]) if row_offsets.size else 0
    row_offsets = row_offsets - base
    inputs = np.asarray(input_ids)[base : base + n].astype(np.int32, copy=False)
    targets = np.asarray(target_ids)[base : base + n].astype(np.int32, copy=False)
    mask = np.asarray(loss_mask)[base : base + n].astype(np.uint8, copy=False)
    positions = np.asarray(position_ids)[base : base + n].astype(np.int32, copy=False)
    segments = None if segment_ids is None else np.asarray(segment_ids)[base : base + n]

    row_lengths = np.diff(row_offsets)
    if np.any(row_lengths == 0):
        raise ValueError(f"row {int(np.flatnonzero(row_lengths == 0)[0])} has no positions: it holds no document")
    row_start = np.zeros(n, dtype=bool)
    row_start[row_offsets[:-1]] = True
    one_document_per_row = np.zeros(n, dtype=np.int8)  # the rows layout
    starts, lengths = segment_bounds(one_document_per_row if segments is None else segments, row_offsets)
    starts_mask = np.zeros(n, dtype=bool)
    starts_mask[starts] = True
    if segments is not None:
        _check(segments[row_start] == 0, row_start, row_offsets, "segment_ids do not start at 0")
        inner = starts_mask & ~row_start
        steps = np.ones(n, dtype=bool)
        steps[1:][inner[1:]] = segments[1:][inner[1:]] == segments[:-1][inner[1:]] + 1
        _check(steps, None, row_offsets, "segment_ids do not count up by one")
    follows = ~starts_mask  # positions that continue a document
    _check(positions[starts_mask] == 0, starts_mask, row_offsets, "a document's position_ids do not start at 0")
    ok = np.ones(n, dtype=bool)
    ok[1:][follows[1:]] = positions[1:][follows[1:]] == positions[:-1][follows[1:]] + 1
    _check(ok, None, row_offsets, "position_ids do not count up by one inside a document")
    ok[:] = True
    ok[1:][follows[1:]] = inputs[1:][follows[1:]] == targets[:-1][follows[1:]]
    _check(ok, None, row_offsets, "input_ids[k + 1] != target_ids[k]: the row is not a shifted document")

    docs = starts.size
    ends = starts + lengths
    doc_of = np.cumsum(starts_mask) - 1
    out = np.arange(n) + doc_of  # where each input token lands
    last = ends + np.arange(docs)  # where each document's last token lands
    first = starts + np.arange(docs)  # where each document's first token lands

    tokens = np.empty(n + docs, dtype=np.int32)
    tokens[out] = inputs
    tokens[last] = targets[ends - 1]
    counted = np.zeros(n + docs, dtype=np.uint8)
    counted[out + 1] = mask
    labels = np.where(counted == 1, tokens, IGNORE_INDEX).astype(np.int32)
    out_positions = np.empty(n + docs, dtype=np.int32)
    out_positions[out] = positions
    out_positions[last] = positions[ends - 1] + 1

    doc_offsets = np.append(first, n + docs).astype(np.int64)
    row_docs = np.searchsorted(starts, row_offsets, side="left").astype(np.int64)
    return Unshifted(tokens, counted, labels, out_positions, doc_offsets, row_docs)


def _check(ok: np.ndarray, where: np.ndarray | None, row_offsets: np.ndarray, message: str) -> None:
    """Raise for the first failing position, naming its row; `where` maps a compressed `ok` back to positions."""
    if ok.all():
        return
    bad = np.flatnonzero(~ok)[0]
    position = int(np.flatnonzero(where)[bad]) if where is not None else int(bad)
    row = int(np.searchsorted(row_offsets, position, side="right") - 1)
    raise ValueError(f"row {row}: {message} (position {position - int(row_offsets[row])})")


def unshift_batch(batch: pa.RecordBatch) -> Unshifted:
    """`unshift` over a record batch of either shard layout (packed when it has `segment_ids`)."""
    names = [*POSITION_COLUMNS, *(["segment_ids"] if "segment_ids" in batch.schema.names else [])]
    offsets = batch.column(names[0]).offsets.to_numpy()
    flat = {}
    for name in names:
        column = batch.column(name)
        if not np.array_equal(column.offsets.to_numpy(), offsets):
            raise ValueError(f"column {name} has other row lengths than input_ids")
        flat[name] = column.values.to_numpy()
    return unshift(
        offsets,
        flat["input_ids"],
        flat["target_ids"],
        flat["loss_mask"],
        flat["position_ids"],
        flat.get("segment_ids"),
    )


def unshifted_batches(shards: ShardSet) -> Iterator[tuple[int, Unshifted]]:
    """(shard index, unshifted documents) for every record batch of `shards`, in order, one batch in memory at a
    time: the stream every trainer export is written from. A row that is not a shifted document stops the export
    with its shard named."""
    columns = [*POSITION_COLUMNS, *(["segment_ids"] if shards.packed else [])]
    for index, batch in shards.iter_batches(columns):
        try:
            yield index, unshift_batch(batch)
        except ValueError as exc:
            raise SetupError(f"shard {shards.files[index].path}: {exc}") from None
