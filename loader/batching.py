"""Rows -> one batch of NumPy arrays, shifted exactly as in the shards, with everything attention needs.

A batch is `B` sequences of `L` positions. A sequence holds one or more whole rows (one in padded batches; as
many as fit in packed batches) and each row one or more documents (several when the shards are packed). Keys:

    input_ids       int64 [B, L]  tokens read at each position (pad_id on padding)
    target_ids      int64 [B, L]  tokens to predict at each position, already shifted (pad_id on padding)
    loss_mask       bool  [B, L]  True where the target counts; False on padding
    attention_mask  bool  [B, L]  True on real positions, False on padding
    position_ids    int64 [B, L]  position in its document, restarting at 0 per document (0 on padding)
    segment_ids     int64 [B, L]  document of each position within its sequence, 0, 1, ... (-1 on padding);
                                  attention must stay inside a segment (see `block_causal_mask`)
    cu_seqlens      int32 [D+1]   document boundaries over `input_ids[attention_mask]` (row-major), the
                                  layout of flash-attention's varlen kernels; `max_seqlen` is the longest
    num_loss_tokens int           counted targets in the batch: divide the summed loss by it
    row_ids         int64 [K]     global ids of the shard rows in the batch, in order (for tracing)

The loss of a batch is `sum(loss_mask * -log p(target_ids)) / num_loss_tokens`; there is nothing to shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schemas.segments import segment_bounds


@dataclass(slots=True)
class RowView:
    """One shard row, as views into a decoded record batch."""

    row_id: int
    input_ids: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    segment_ids: np.ndarray | None  # None in the rows layout (the row is one document)

    @property
    def length(self) -> int:
        return int(self.input_ids.size)

    def document_lengths(self) -> np.ndarray:
        """Positions of each document of the row, in order (`segment_bounds`); a row with no position has none."""
        one_document = np.zeros(self.length, dtype=np.int8)  # the rows layout
        return segment_bounds(one_document if self.segment_ids is None else self.segment_ids)[1]


def collate(sequences: Sequence[Sequence[RowView]], pad_id: int, length: int | None = None) -> dict[str, Any]:
    """Lay out `sequences` (each a list of rows to concatenate) as a batch; `length` fixes L, else the longest."""
    sizes = [sum(row.length for row in sequence) for sequence in sequences]
    width = max(sizes, default=0) if length is None else length
    if sizes and max(sizes) > width:
        raise ValueError(f"a sequence of {max(sizes)} positions does not fit in length {width}")
    shape = (len(sequences), width)
    batch: dict[str, Any] = {
        "input_ids": np.full(shape, pad_id, dtype=np.int64),
        "target_ids": np.full(shape, pad_id, dtype=np.int64),
        "loss_mask": np.zeros(shape, dtype=bool),
        "attention_mask": np.zeros(shape, dtype=bool),
        "position_ids": np.zeros(shape, dtype=np.int64),
        "segment_ids": np.full(shape, -1, dtype=np.int64),
    }
    doc_lengths: list[np.ndarray] = []
    row_ids: list[int] = []
    for b, sequence in enumerate(sequences):
        at, segments = 0, 0
        for row in sequence:
            end = at + row.length
            batch["input_ids"][b, at:end] = row.input_ids
            batch["target_ids"][b, at:end] = row.target_ids
            batch["loss_mask"][b, at:end] = row.loss_mask != 0
            batch["attention_mask"][b, at:end] = True
            batch["position_ids"][b, at:end] = row.position_ids
            lengths = row.document_lengths()
            batch["segment_ids"][b, at:end] = segments + np.repeat(np.arange(lengths.size), lengths)
            segments += lengths.size
            doc_lengths.append(lengths)
            row_ids.append(row.row_id)
            at = end
    all_lengths = np.concatenate(doc_lengths) if doc_lengths else np.zeros(0, dtype=np.int64)
    cu_seqlens = np.zeros(all_lengths.size + 1, dtype=np.int32)
    np.cumsum(all_lengths, out=cu_seqlens[1:])
    batch["cu_seqlens"] = cu_seqlens
    batch["max_seqlen"] = int(all_lengths.max(initial=0))
    batch["num_loss_tokens"] = int(batch["loss_mask"].sum())
    batch["row_ids"] = np.asarray(row_ids, dtype=np.int64)
    return batch


def block_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """[B, L, L] bool, True where query i may attend to key j: j <= i, same segment.

    A padding position (segment -1) attends only to itself, so no softmax row is empty (an empty one gives NaN).
    Memory is B * L * L bytes: for long rows prefer `segment_ids` / `cu_seqlens` with a varlen kernel.
    """
    segments = np.asarray(segment_ids)
    length = segments.shape[-1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    same = segments[:, :, None] == segments[:, None, :]
    real = (segments >= 0)[:, :, None]
    return (same & real & causal) | np.eye(length, dtype=bool)
