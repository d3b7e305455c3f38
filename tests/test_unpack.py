"""Unpacking packed shards gives back exactly the documents prepared without packing."""

from __future__ import annotations

import pyarrow as pa
from lossmask.pipeline.packed import unpack_batch
from lossmask.schemas.shards import SHARD_SCHEMA

from .support import DATA, read_table, run_prepare


def test_unpacked_packed_shards_equal_the_rows_layout(tmp_path):
    inputs = [DATA / "openai.jsonl", DATA / "tools.jsonl", DATA / "text.jsonl"]
    _, rows_out = run_prepare(tmp_path, inputs, out_name="rows")
    _, packed_out = run_prepare(tmp_path, inputs, out_name="packed", pack=300)
    packed = read_table(packed_out)
    assert packed.num_rows < read_table(rows_out).num_rows  # documents really share rows
    unpacked = pa.Table.from_batches([unpack_batch(b) for b in packed.to_batches()], schema=SHARD_SCHEMA)
    key = [("record_index", "ascending"), ("part", "ascending")]
    assert unpacked.sort_by(key).to_pylist() == read_table(rows_out).sort_by(key).to_pylist()
