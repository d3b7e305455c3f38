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
    HF_PAIRS_SCHEMA,
    HF_ROWS_SCHEMA,
    HF_SUFFIXES,
)
from ..schemas.preference import LAYOUT_KTO, LAYOUT_PAIRS, SIDES
from ..schemas.shards import MANIFEST_NAME
from .files import prepare_out
from .unshift import Unshifted, unshift_batch

_OWNED = re.compile(r"train-\d{5}-of-\d{5}\.(parquet|arrow)")


def hf_schema(packed: bool, layout: str | None = None) -> pa.Schema:
    if layout == LAYOUT_PAIRS:
        return HF_PAIRS_SCHEMA
    return HF_PACKED_SCHEMA if packed else HF_ROWS_SCHEMA


def hf_pairs_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int, int]:
    """TRL's preference columns of a batch of pair rows, with its tokens and counted tokens.

    Each side unshifted (t = input_ids + its last target): `prompt_ids` = t[:prompt_length], and the side's
    completion = t[prompt_length : its last counted token + 1]. TRL counts every completion token, so a side
    whose counted tokens are not exactly that run (an uncounted token inside it) cannot be given to it as is, and
    the export refuses it, naming the row; tokens after the last counted one (what a template writes after the
    stop) are left out, as they never count."""
    rows = batch.to_pydict()
    out: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    tokens = counted = 0
    for k in range(batch.num_rows):
        p = rows["prompt_length"][k]
        for side in SIDES:
            t = [*rows[f"{side}_input_ids"][k], rows[f"{side}_target_ids"][k][-1]]
            mask = np.asarray(rows[f"{side}_loss_mask"][k], dtype=bool)
            trained = np.flatnonzero(mask) + 1  # the token each counted target is
            end = int(trained[-1]) + 1
            if trained[0] != p or trained.size != end - p:
                raise ValueError(
                    f"row {rows['source'][k]}: the {side} side's counted tokens are not one run from the end of the "
                    "prompt, which TRL's DPOTrainer (it counts every completion token) cannot be given"
                )
            if side == "chosen":
                out["prompt_ids"].append(t[:p])
            out[f"{side}_ids"].append(t[p:end])
            tokens += end
            counted += end - p
    arrays = [pa.array(out[name], pa.list_(pa.int32())) for name in HF_PAIRS_SCHEMA.names]
    return pa.RecordBatch.from_arrays(arrays, schema=HF_PAIRS_SCHEMA), tokens, counted


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
    if shards.layout == LAYOUT_KTO:  # its rows would lose their label: no KTO columns yet
        raise SetupError(f"{shards.directory} holds KTO rows; --to hf writes SFT rows and preference pairs only")
    if verify:
        shards.verify()
    prepare_out(out, shards.directory, lambda name: bool(_OWNED.fullmatch(name)) or name == EXPORT_INFO_NAME)
    pairs = shards.layout == LAYOUT_PAIRS
    schema = hf_schema(shards.packed, shards.layout)
    count = max(len(shards.files), 1)
    files: list[dict[str, Any]] = []
    # One file per shard; with no shard at all, one empty file so that `load_dataset` finds a (0-row) split.
    for index in range(count):
        name = HF_FILE_PATTERN.format(index=index, count=count, suffix=HF_SUFFIXES[file_format])
        writer = _Writer(out / name, schema, file_format)
        rows = tokens = counted = 0
        for batch in shards.batches(index) if shards.files else []:
            try:
                if pairs:
                    out_batch, batch_tokens, batch_counted = hf_pairs_batch(batch)
                else:
                    unshifted = unshift_batch(batch)
                    out_batch = hf_batch(unshifted, shards.packed)
                    batch_tokens, batch_counted = int(unshifted.tokens.size), int(np.count_nonzero(unshifted.counted))
            except ValueError as exc:
                raise SetupError(f"shard {shards.files[index].path}: {exc}") from None
            writer.write(out_batch)
            rows += batch.num_rows
            tokens += batch_tokens
            counted += batch_counted
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
