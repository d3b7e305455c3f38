"""`lossmask export --to megatron-bridge`: packed SFT Parquet as Megatron-Bridge's `GPTSFTPackedParquetDataset`
reads it (megatron-bridge 0.6.2: `megatron/bridge/data/packing/parquet.py`, collated by
`GPTSFTPackedDataset.collate_fn` in `packing/gpt_sft.py`; 0.4 and 0.5 had them in `data/datasets/`), plus the
packing metadata its `PackedSequenceSpecs.packed_metadata_path` points at.

One `*.idx.parquet` file per shard (the name Megatron-Bridge's packed-file check looks for), one row per shard
row, row groups of 500 rows as Megatron-Bridge's `write_packed_parquet` writes them:

    input_ids     list<int32>  the row's documents, each unshifted and whole, concatenated
    loss_mask     list<int8>   per token, aligned to the *label* at that position: loss_mask[j] = 1 when
                               input_ids[j + 1] is a counted target of the same document; 0 on each
                               document's last token (Megatron-Bridge's "roll by 1" in fill_packing_strategy)
    seq_start_id  list<int32>  where each document begins in input_ids, from 0

The collator cuts every document d at `seq_start_id`: tokens `d[:-1]`, labels `d[1:]`, loss mask
`loss_mask[start:end - 1]`, positions restarting at 0, and `cu_seqlens` per document, so attention (THD) and
targets never cross documents; it then zeroes the loss mask wherever the input token is the tokenizer's EOS, a
rule of its own (a counted target right after an EOS is not trained). A row of the rows layout is a pack of one
document. Megatron-Bridge counts a document's length as its tokens minus one (`create_hist`), which is a shard
row's positions, so `pack_size` is the shards' `--pack N`. Provenance lives in each file's Parquet metadata
(`lossmask.source`): no sidecar.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..files import finish, temp_path
from ..loader.shards import ShardSet
from .files import prepare_out, require_documents
from .sidecar import file_entries, source_info
from .unshift import Unshifted, unshifted_batches

FILE_PATTERN = "train-{index:05d}-of-{count:05d}.idx.parquet"
METADATA_NAME = "packing_metadata.json"
ROW_GROUP_SIZE = 500  # Megatron-Bridge's write_packed_parquet default
_OWNED = re.compile(r"train-\d{5}-of-\d{5}\.idx\.parquet")

SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),
        pa.field("seq_start_id", pa.list_(pa.int32()), nullable=False),
    ]
)


def label_aligned_mask(unshifted: Unshifted) -> np.ndarray:
    """Megatron-Bridge's loss mask: at each token, whether the next token of its document is a counted target."""
    mask = np.zeros(unshifted.counted.size, dtype=np.int8)
    mask[:-1] = unshifted.counted[1:]
    mask[unshifted.doc_offsets[1:] - 1] = 0  # a document's last token predicts nothing in it
    return mask


def packed_batch(unshifted: Unshifted) -> pa.RecordBatch:
    """The Megatron-Bridge columns of a batch of unshifted rows."""
    row_offsets = unshifted.row_offsets.astype(np.int32)
    doc_row = np.repeat(np.arange(row_offsets.size - 1), np.diff(unshifted.row_docs))
    starts = (unshifted.doc_offsets[:-1] - unshifted.row_offsets[doc_row]).astype(np.int32)
    columns = [
        pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(unshifted.tokens, type=pa.int32())),
        pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(label_aligned_mask(unshifted), type=pa.int8())),
        pa.ListArray.from_arrays(pa.array(unshifted.row_docs.astype(np.int32)), pa.array(starts, type=pa.int32())),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


class _PackStatistics:
    """What Megatron-Bridge's `create_packing_strategy` records about a packing, over the rows as packed."""

    def __init__(self) -> None:
        self.rows = self.documents = self.positions = 0
        self.max_document = self.max_documents_per_row = 0
        self.min_row: int | None = None

    def add(self, unshifted: Unshifted) -> None:
        doc_positions = unshifted.doc_lengths - 1
        row_positions = np.add.reduceat(doc_positions, unshifted.row_docs[:-1]) if doc_positions.size else []
        per_row = np.diff(unshifted.row_docs)
        self.rows += int(per_row.size)
        self.documents += int(doc_positions.size)
        self.positions += int(doc_positions.sum())
        if doc_positions.size:
            self.max_document = max(self.max_document, int(doc_positions.max()))
            self.max_documents_per_row = max(self.max_documents_per_row, int(per_row.max()))
            low = int(np.min(row_positions))
            self.min_row = low if self.min_row is None else min(self.min_row, low)

    def metadata(self, pack_size: int) -> dict[str, Any]:
        rows = max(self.rows, 1)
        return {
            "dataset_max_seqlen": self.max_document,
            "max_samples_per_bin": self.max_documents_per_row,
            "packing_factor": round(self.documents / rows, 2),
            "packing_efficiency": round(self.positions / rows / pack_size * 100, 2) if pack_size else 0.0,
            "pack_size": pack_size,
            "min_packed_seqlen": self.min_row or 0,
        }


def _pack_size(shards: ShardSet, longest_document: int) -> int:
    """`--pack N` of packed shards; otherwise `--max-length`, or the longest document when neither was set."""
    config = shards.manifest.get("config", {})
    for key in ("pack", "max_length"):
        if config.get(key):
            return int(config[key])
    return longest_document


def export_megatron_bridge(shards: ShardSet, out: str | Path, verify: bool = True) -> dict[str, Any]:
    """Write the Megatron-Bridge packed export of `shards` to `out`; returns the packing metadata and files."""
    out = Path(out)
    require_documents(shards, "megatron-bridge")
    if verify:
        shards.verify()
    prepare_out(out, shards.directory, lambda name: bool(_OWNED.fullmatch(name)) or name == METADATA_NAME)
    provenance = json.dumps({"format": "megatron-bridge", "layout": shards.layout, **source_info(shards)})
    schema = SCHEMA.with_metadata({"lossmask.source": provenance})
    count = len(shards.files)
    names = [FILE_PATTERN.format(index=index, count=count) for index in range(count)]
    statistics = _PackStatistics()
    writers: dict[int, pq.ParquetWriter] = {}

    def close(index: int) -> None:
        writers.pop(index).close()
        finish(temp_path(out / names[index]), out / names[index])

    for index, unshifted in unshifted_batches(shards):
        if index not in writers:
            for done in list(writers):
                close(done)
            writers[index] = pq.ParquetWriter(str(temp_path(out / names[index])), schema)
        writers[index].write_table(pa.Table.from_batches([packed_batch(unshifted)]), row_group_size=ROW_GROUP_SIZE)
        statistics.add(unshifted)
    for done in list(writers):
        close(done)
    written = [name for name in names if (out / name).is_file()]
    metadata = statistics.metadata(_pack_size(shards, statistics.max_document))
    temp = temp_path(out / METADATA_NAME)
    temp.write_text(json.dumps([metadata]), encoding="utf-8")  # a list: one entry per packed dataset
    finish(temp, out / METADATA_NAME)
    return {"packing_metadata": metadata, "files": file_entries(out, written), "rows": statistics.rows}
