"""Record batches are built by column name (`schemas.shards.record_batch`), and the packed schema is derived from
the rows schema: a column can neither land under another's name nor be in one layout and missing from the other."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from lossmask.pipeline.packed import PackedRow, packed_rows_to_batch, unpack_batch
from lossmask.pipeline.shift import Row, rows_to_batch
from lossmask.schemas.shards import (
    PACKED_SHARD_SCHEMA,
    PER_DOCUMENT_COLUMNS,
    PER_POSITION_COLUMNS,
    SHARD_SCHEMA,
    record_batch,
)


def _row(index: int, tokens: list[int]) -> Row:
    ids = np.array(tokens, dtype=np.int32)
    return Row(
        input_ids=ids[:-1],
        target_ids=ids[1:],
        loss_mask=np.ones(ids.size - 1, dtype=np.uint8),
        token_class=np.full(ids.size - 1, 5, dtype=np.uint8),
        source=f"in.jsonl:{index + 1}",
        record_index=index,
        part=0,
        flags=index,
    )


def test_columns_are_placed_by_name_whatever_order_they_come_in():
    batch = rows_to_batch([_row(0, [1, 2, 3]), _row(1, [4, 5])])
    columns = {name: batch.column(name) for name in reversed(SHARD_SCHEMA.names)}
    rebuilt = record_batch(columns, SHARD_SCHEMA)
    assert rebuilt.equals(batch) and rebuilt.schema.equals(SHARD_SCHEMA, check_metadata=True)


@pytest.mark.parametrize(("drop", "add"), [("flags", None), (None, "segment_ids"), ("part", "parts")])
def test_a_missing_or_extra_column_is_an_error_naming_it(drop, add):
    batch = rows_to_batch([_row(0, [1, 2, 3])])
    columns = {name: batch.column(name) for name in SHARD_SCHEMA.names if name != drop}
    if add:
        columns[add] = batch.column("part")
    with pytest.raises(ValueError, match="do not match the schema") as error:
        record_batch(columns, SHARD_SCHEMA)
    assert all(f"'{name}'" in str(error.value) for name in (drop, add) if name)


def test_the_packed_schema_is_the_rows_schema_with_lists_per_document_and_segment_ids():
    rows = {f.name: f for f in SHARD_SCHEMA}
    packed = {f.name: f for f in PACKED_SHARD_SCHEMA}
    assert list(packed) == [*PER_POSITION_COLUMNS, "segment_ids", *(n for n in rows if n not in PER_POSITION_COLUMNS)]
    for name, field in rows.items():
        expected = pa.list_(field.type) if name in PER_DOCUMENT_COLUMNS else field.type
        assert packed[name].type == expected and not packed[name].nullable
    changed_docs = {n for n in rows if packed[n].metadata != rows[n].metadata}
    assert changed_docs == set(PER_DOCUMENT_COLUMNS)  # the per-document columns say "packed rows: ... of each"
    assert PACKED_SHARD_SCHEMA.metadata == {**SHARD_SCHEMA.metadata, b"lossmask.layout": b"packed"}


def test_packed_rows_and_their_unpacking_have_their_schemas_and_the_rows():
    documents = [_row(0, [1, 2, 3]), _row(1, [4, 5]), _row(2, [6, 7, 8, 9])]
    packed = packed_rows_to_batch([PackedRow(documents[:2]), PackedRow(documents[2:])])
    assert packed.schema.equals(PACKED_SHARD_SCHEMA, check_metadata=True)
    assert packed.column("segment_ids").to_pylist() == [[0, 0, 1], [0, 0, 0]]
    assert packed.column("flags").to_pylist() == [[0, 1], [2]]
    assert unpack_batch(packed).equals(rows_to_batch(documents))
