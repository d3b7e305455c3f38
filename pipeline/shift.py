"""Stage 7, shift: tokens -> the (input, target, mask) triple of next-token prediction, as one output row.

    input_ids = t[:-1]   target_ids = t[1:]   loss_mask = m[1:]   token_class = class(t[1:])

A target counts when the token it predicts is trainable. Each example is shifted on its own, before any
packing, so no target ever crosses from one document into the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..schemas.arrays import column, lists, numeric, values
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
        dtype = np.dtype(str(SHARD_SCHEMA.field(name).type.value_type))  # int32, uint8 (no pandas import)
        arrays = [getattr(r, name) for r in rows]
        values[name] = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)
    return values


def document_values(rows: list[Row]) -> dict[str, pa.Array]:
    """Each of `PER_DOCUMENT_COLUMNS` (source, record_index, part, flags): a value per row, typed as in the schema."""
    return {
        name: column([getattr(r, name) for r in rows], SHARD_SCHEMA.field(name).type) for name in PER_DOCUMENT_COLUMNS
    }


def _value_type(name: str) -> pa.DataType:
    return SHARD_SCHEMA.field(name).type.value_type


def rows_to_batch(rows: list[Row]) -> pa.RecordBatch:
    """Rows -> one Arrow record batch of `SHARD_SCHEMA`, building list columns from flat buffers."""
    lengths = np.fromiter((r.num_tokens for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.append(0, np.cumsum(lengths)).astype(np.int32)
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]) if rows else np.zeros(0, np.int32)
    per_position = {**token_values(rows), "position_ids": positions}
    loss_tokens = np.fromiter((r.num_loss_tokens for r in rows), dtype=np.int32, count=len(rows))
    columns = {
        **{name: lists(offsets, numeric(values, _value_type(name))) for name, values in per_position.items()},
        "num_tokens": numeric(lengths, pa.int32()),
        "num_loss_tokens": numeric(loss_tokens, pa.int32()),
        **document_values(rows),
    }
    return record_batch(columns, SHARD_SCHEMA)


def rows_from_batch(batch: pa.RecordBatch) -> list[Row]:
    """The inverse of `rows_to_batch`: `Row`s whose arrays are views into the batch's buffers."""
    if batch.num_rows == 0:
        return []
    # A slice's offsets index its list columns' whole child arrays (`.values` ignores the slice), as here.
    offsets = values(batch.column("input_ids").offsets)
    tokens = {name: values(batch.column(name).values) for name in TOKEN_COLUMNS}
    sources = batch.column("source").to_pylist()
    indices = values(batch.column("record_index"))
    parts = values(batch.column("part"))
    flags = values(batch.column("flags"))
    rows = []
    for k in range(batch.num_rows):
        a, b = int(offsets[k]), int(offsets[k + 1])
        rows.append(
            Row(
                *(tokens[name][a:b] for name in TOKEN_COLUMNS),
                source=sources[k],
                record_index=int(indices[k]),
                part=int(parts[k]),
                flags=int(flags[k]),
            )
        )
    return rows
