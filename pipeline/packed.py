"""A packed row: several shifted documents laid end to end, and its Arrow form (`PACKED_SHARD_SCHEMA`).

Each document was shifted on its own (`shift.shift`), so a packed row is the concatenation of whole (input,
target) pairs: no target ever crosses from one document into the next. Per position, `segment_ids` says which
document of the row it belongs to (0, 1, ...) and `position_ids` restart at 0 with each document; per document,
`source`, `record_index`, `part` and `flags` become lists in segment order.

cu_seqlens (flash-attention's varlen boundaries) are not stored: they are where the segment changes
(`schemas.segments.segment_bounds`, the rule every reader uses), the same places where `position_ids` is 0:

    starts, _ = segment_bounds(segment_ids)                       # == np.flatnonzero(position_ids == 0)
    cu_seqlens = np.append(starts, len(segment_ids)).astype(np.int32)

(docs/packing.md runs its own version of this as a test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..schemas.arrays import lists, numeric
from ..schemas.segments import segment_bounds
from ..schemas.shards import PACKED_SHARD_SCHEMA, PER_DOCUMENT_COLUMNS, PER_POSITION_COLUMNS, SHARD_SCHEMA, record_batch
from .shift import Row, document_values, token_values


@dataclass(slots=True)
class PackedRow:
    documents: list[Row]  # in segment order

    @property
    def num_tokens(self) -> int:
        return sum(d.num_tokens for d in self.documents)

    @property
    def num_loss_tokens(self) -> int:
        return sum(d.num_loss_tokens for d in self.documents)


def cu_seqlens(segment_ids: np.ndarray) -> np.ndarray:
    """Document boundaries of one packed row: document k is positions [cu[k], cu[k + 1]) (`segment_bounds`)."""
    starts, _ = segment_bounds(segment_ids)
    return np.append(starts, np.asarray(segment_ids).size).astype(np.int32)


def packed_rows_to_batch(rows: list[PackedRow]) -> pa.RecordBatch:
    """Packed rows -> one Arrow record batch of `PACKED_SHARD_SCHEMA`, built from flat buffers."""
    documents = [d for row in rows for d in row.documents]
    doc_lengths = np.fromiter((d.num_tokens for d in documents), dtype=np.int64, count=len(documents))
    docs_per_row = np.fromiter((len(row.documents) for row in rows), dtype=np.int64, count=len(rows))
    doc_offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(doc_lengths, out=doc_offsets[1:])
    row_docs = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(docs_per_row, out=row_docs[1:])
    position_offsets = doc_offsets[row_docs]  # row r: positions of its documents
    document_offsets = row_docs  # row r: its documents

    total = int(doc_offsets[-1])
    positions = np.arange(total, dtype=np.int64) - np.repeat(doc_offsets[:-1], doc_lengths)
    segment_of_doc = np.arange(len(documents), dtype=np.int64) - np.repeat(row_docs[:-1], docs_per_row)
    per_position = {
        **token_values(documents),
        "position_ids": positions.astype(np.int32),
        "segment_ids": np.repeat(segment_of_doc, doc_lengths).astype(np.int32),
    }
    row_of_position = np.repeat(np.arange(len(rows)), doc_offsets[row_docs[1:]] - doc_offsets[row_docs[:-1]])
    loss_tokens = np.bincount(row_of_position, weights=per_position["loss_mask"], minlength=len(rows))
    columns = {
        **{
            name: lists(position_offsets, numeric(v, PACKED_SHARD_SCHEMA.field(name).type.value_type))
            for name, v in per_position.items()
        },
        "num_tokens": numeric(np.diff(doc_offsets[row_docs]), pa.int32()),
        "num_loss_tokens": numeric(loss_tokens, pa.int32()),
        **{name: lists(document_offsets, v) for name, v in document_values(documents).items()},
    }
    return record_batch(columns, PACKED_SHARD_SCHEMA)


def unpack_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The inverse of packing: a packed record batch as the rows layout (`SHARD_SCHEMA`), one document per row.

    Documents were shifted before packing, so the per-position values stay as they are; only the list offsets
    change, to cut at every document start (`segment_bounds`). The per-document lists (source, record_index, part,
    flags) hold one entry per segment, in order, so their flattened values are exactly the new rows' columns.
    """
    segments = batch.column("segment_ids")
    starts, lengths = segment_bounds(segments.values.to_numpy(), segments.offsets.to_numpy())
    new_offsets = pa.array(np.append(starts, len(segments.values)).astype(np.int32))
    mask = batch.column("loss_mask").values.to_numpy()
    loss_tokens = np.add.reduceat(mask.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
    columns = {
        **{name: pa.ListArray.from_arrays(new_offsets, batch.column(name).values) for name in PER_POSITION_COLUMNS},
        "num_tokens": pa.array(lengths, type=pa.int32()),
        "num_loss_tokens": pa.array(loss_tokens, type=pa.int32()),
        **{name: batch.column(name).values for name in PER_DOCUMENT_COLUMNS},
    }
    return record_batch(columns, SHARD_SCHEMA)
