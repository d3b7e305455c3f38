"""Stage 7, shift: tokens -> the (input, target, mask) triple of next-token prediction, as one output row.

    input_ids = t[:-1]   target_ids = t[1:]   loss_mask = m[1:]   token_class = class(t[1:])

A target counts when the token it predicts is trainable. Each example is shifted on its own, before any
packing, so no target ever crosses from one document into the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..schemas.examples import TokenizedExample
from ..schemas.shards import SHARD_SCHEMA


@dataclass(slots=True)
class Row:
    input_ids: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray
    token_class: np.ndarray
    source: str
    record_index: int
    part: int
    flags: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def shift(example: TokenizedExample) -> Row:
    ids = example.ids.astype(np.int32, copy=False)
    return Row(
        input_ids=ids[:-1],
        target_ids=ids[1:],
        loss_mask=example.trainable[1:].astype(np.uint8, copy=False),
        token_class=example.classes[1:].astype(np.uint8, copy=False),
        source=str(example.source),
        record_index=example.source.index,
        part=example.part,
        flags=example.flags,
    )


def rows_to_batch(rows: list[Row]) -> pa.RecordBatch:
    """Rows -> one Arrow record batch of `SHARD_SCHEMA`, building list columns from flat buffers."""
    lengths = np.fromiter((r.num_tokens for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])

    def lists(values: list[np.ndarray], dtype: type) -> pa.ListArray:
        flat = np.concatenate(values).astype(dtype, copy=False) if values else np.zeros(0, dtype=dtype)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))

    positions = [np.arange(n, dtype=np.int32) for n in lengths]
    columns = [
        lists([r.input_ids for r in rows], np.int32),
        lists([r.target_ids for r in rows], np.int32),
        lists([r.loss_mask for r in rows], np.uint8),
        lists(positions, np.int32),
        lists([r.token_class for r in rows], np.uint8),
        pa.array(lengths, type=pa.int32()),
        pa.array([r.num_loss_tokens for r in rows], type=pa.int32()),
        pa.array([r.source for r in rows], type=pa.string()),
        pa.array([r.record_index for r in rows], type=pa.int64()),
        pa.array([r.part for r in rows], type=pa.int32()),
        pa.array([r.flags for r in rows], type=pa.uint32()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SHARD_SCHEMA)
