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
from ..schemas.shards import PER_DOCUMENT_COLUMNS, SHARD_SCHEMA, record_batch


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


TOKEN_COLUMNS = ("input_ids", "target_ids", "loss_mask", "token_class")  # the per-position arrays a Row holds


def token_values(rows: list[Row]) -> dict[str, np.ndarray]:
    """Each of `TOKEN_COLUMNS`, concatenated over `rows`, in its `SHARD_SCHEMA` type (the values of list columns)."""
    values = {}
    for name in TOKEN_COLUMNS:
        dtype = SHARD_SCHEMA.field(name).type.value_type.to_pandas_dtype()
        arrays = [getattr(r, name) for r in rows]
        values[name] = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)
    return values


def document_values(rows: list[Row]) -> dict[str, pa.Array]:
    """Each of `PER_DOCUMENT_COLUMNS` (source, record_index, part, flags): a value per row, typed as in the schema."""
    return {
        name: pa.array([getattr(r, name) for r in rows], type=SHARD_SCHEMA.field(name).type)
        for name in PER_DOCUMENT_COLUMNS
    }


def rows_to_batch(rows: list[Row]) -> pa.RecordBatch:
    """Rows -> one Arrow record batch of `SHARD_SCHEMA`, building list columns from flat buffers."""
    lengths = np.fromiter((r.num_tokens for r in rows), dtype=np.int32, count=len(rows))
    offsets = pa.array(np.append(0, np.cumsum(lengths)).astype(np.int32))
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]) if rows else np.zeros(0, np.int32)
    per_position = {**token_values(rows), "position_ids": positions}
    columns = {
        **{name: pa.ListArray.from_arrays(offsets, pa.array(values)) for name, values in per_position.items()},
        "num_tokens": pa.array(lengths, type=pa.int32()),
        "num_loss_tokens": pa.array([r.num_loss_tokens for r in rows], type=pa.int32()),
        **document_values(rows),
    }
    return record_batch(columns, SHARD_SCHEMA)
