"""`lossmask export --to hf`: shards -> unshifted `input_ids` + `labels` (-100) rows that Hugging Face models,
`Trainer`, TRL's `SFTTrainer` and `datasets` take as they are (layouts: `lossmask.schemas.exports`).

One output file per shard, in shard order, so row i of the export is row i of the shards (their `source`,
`flags` and `token_class` stay in the shards). Parquet is zstd-compressed; Arrow is an uncompressed IPC stream,
the format `datasets` itself caches in, so `datasets.Dataset.from_file` memory-maps it without a copy.
Memory is one record batch at a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SetupError
from ..files import file_sha256, finish, temp_path, write_json
from ..loader.shards import ShardSet
from ..schemas.exports import (
    EXPORT_INFO_NAME,
    HF_COLUMN_DOCS,
    HF_FILE_PATTERN,
    HF_PACKED_SCHEMA,
    HF_ROWS_SCHEMA,
    HF_SUFFIXES,
)
from ..schemas.shards import MANIFEST_NAME
from .files import prepare_out
from .unshift import Unshifted, unshift_batch

_OWNED = re.compile(r"train-\d{5}-of-\d{5}\.(parquet|arrow)")


def hf_schema(packed: bool) -> pa.Schema:
    return HF_PACKED_SCHEMA if packed else HF_ROWS_SCHEMA


def hf_batch(unshifted: Unshifted, packed: bool) -> pa.RecordBatch:
    """The Hugging Face columns of a batch of unshifted rows."""
    offsets = pa.array(unshifted.row_offsets.astype(np.int32))

    def lists(values: np.ndarray, type_: pa.DataType, row_offsets: pa.Array = offsets) -> pa.ListArray:
        return pa.ListArray.from_arrays(row_offsets, pa.array(values, type=type_))

    columns = {
        "input_ids": lists(unshifted.tokens, pa.int32()),
        "labels": lists(unshifted.labels, pa.int32()),
        "attention_mask": lists(np.ones(unshifted.tokens.size, dtype=np.int8), pa.int8()),
        "position_ids": lists(unshifted.positions, pa.int32()),
        "seq_lengths": lists(
            unshifted.doc_lengths.astype(np.int32), pa.int32(), pa.array(unshifted.row_docs.astype(np.int32))
        ),
    }
    schema = hf_schema(packed)
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


class _Writer:
    """Parquet (zstd) or an Arrow IPC stream (uncompressed, memory-mappable by `datasets`)."""

    def __init__(self, path: Path, schema: pa.Schema, file_format: str):
        self.path = path
        self.temp = temp_path(path)
        self.sink: Any = None
        if file_format == "parquet":
            self.writer: Any = pq.ParquetWriter(str(self.temp), schema, compression="zstd")
        else:
            self.sink = pa.OSFile(str(self.temp), "wb")
            self.writer = pa.ipc.new_stream(self.sink, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def close(self) -> None:
        self.writer.close()
        if self.sink is not None:
            self.sink.close()
        finish(self.temp, self.path)


def export_hf(shards: ShardSet, out: str | Path, file_format: str = "parquet", verify: bool = True) -> dict[str, Any]:
    """Write the Hugging Face export of `shards` to `out`; returns what `_export.json` records."""
    if file_format not in HF_SUFFIXES:
        raise SetupError(f"unknown file format {file_format!r}: use one of {sorted(HF_SUFFIXES)}")
    out = Path(out)
    if verify:
        shards.verify()
    prepare_out(out, shards.directory, lambda name: bool(_OWNED.fullmatch(name)) or name == EXPORT_INFO_NAME)
    schema = hf_schema(shards.packed)
    count = max(len(shards.files), 1)
    files: list[dict[str, Any]] = []
    # One file per shard; with no shard at all, one empty file so that `load_dataset` finds a (0-row) split.
    for index in range(count):
        name = HF_FILE_PATTERN.format(index=index, count=count, suffix=HF_SUFFIXES[file_format])
        writer = _Writer(out / name, schema, file_format)
        rows = tokens = counted = 0
        for batch in shards.batches(index) if shards.files else []:
            try:
                unshifted = unshift_batch(batch)
            except ValueError as exc:
                raise SetupError(f"shard {shards.files[index].path}: {exc}") from None
            writer.write(hf_batch(unshifted, shards.packed))
            rows += batch.num_rows
            tokens += int(unshifted.tokens.size)
            counted += int(np.count_nonzero(unshifted.counted))
        writer.close()
        digest = file_sha256(out / name)
        files.append({"file": name, "rows": rows, "tokens": tokens, "counted": counted, "sha256": digest})
    info = {
        "format": "hf",
        "file_format": file_format,
        "layout": shards.layout,
        "source": {
            "shards": str(shards.directory),
            "manifest_sha256": file_sha256(shards.directory / MANIFEST_NAME),
        },
        "columns": {field.name: {"type": str(field.type), "doc": HF_COLUMN_DOCS[field.name]} for field in schema},
        "files": files,
        "rows": sum(f["rows"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
        "counted": sum(f["counted"] for f in files),
    }
    write_json(out / EXPORT_INFO_NAME, info)
    return info
