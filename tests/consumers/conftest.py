"""Shard folders for the tests of what consumes shards (loader, exports, inspect).

`prepared_dir`: the bundled fixtures run through `prepare` (real rows, several shards). `make_shards` writes
synthetic folders of either layout from documents given as (tokens, trainable flags): the packed layout is
built here by concatenating shifted rows, as the packing stage will (each document shifted before packing).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lossmask.files import file_sha256
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.shift import Row
from lossmask.pipeline.write import shard_name, write_shard
from lossmask.schemas.shards import (
    LAYOUT_PACKED,
    LAYOUT_ROWS,
    MANIFEST_NAME,
    PACKED_SHARD_SCHEMA,
    SCHEMA_VERSION,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
TOKENIZER = FIXTURES / "tokenizer"

Document = tuple[np.ndarray, np.ndarray]  # (tokens t, trainable flags m), unshifted


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures prepared with the fixture tokenizer, 200 rows per shard (4 shards), one reject."""
    out = tmp_path_factory.mktemp("prepared") / "shards"
    inputs = [*sorted(str(p) for p in (FIXTURES / "data").glob("*.json*")), str(FIXTURES / "bad" / "malformed.jsonl")]
    config = PrepareConfig.from_mapping(
        {"inputs": inputs, "tokenizer": str(TOKENIZER), "out": str(out), "shard_max_rows": 200}
    )
    prepare(config)
    return out


def random_documents(rng: np.random.Generator, count: int, max_len: int = 12, vocab: int = 1000) -> list[Document]:
    """Documents of 2..max_len tokens with random trainable flags."""
    docs = []
    for _ in range(count):
        n = int(rng.integers(2, max_len + 1))
        docs.append((rng.integers(0, vocab, n).astype(np.int32), rng.integers(0, 2, n).astype(np.uint8)))
    return docs


def shifted_row(doc: Document, index: int) -> Row:
    tokens, trainable = doc
    return Row(
        input_ids=tokens[:-1],
        target_ids=tokens[1:],
        loss_mask=trainable[1:],
        token_class=np.full(tokens.size - 1, 5, dtype=np.uint8),
        source=f"synthetic.jsonl:{index + 1}",
        record_index=index,
        part=0,
        flags=0,
    )


def packed_batch(groups: Sequence[Sequence[Row]]) -> pa.RecordBatch:
    """Packed rows: each group's shifted rows concatenated, positions restarting, segments counting up."""

    def lists(per_row: list[np.ndarray], type_: pa.DataType) -> pa.ListArray:
        offsets = np.zeros(len(per_row) + 1, dtype=np.int32)
        np.cumsum([a.size for a in per_row], out=offsets[1:])
        flat = np.concatenate(per_row) if per_row else np.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_))

    def cat(group: Sequence[Row], name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in group])

    columns = {
        "input_ids": lists([cat(g, "input_ids") for g in groups], pa.int32()),
        "target_ids": lists([cat(g, "target_ids") for g in groups], pa.int32()),
        "loss_mask": lists([cat(g, "loss_mask") for g in groups], pa.uint8()),
        "position_ids": lists(
            [np.concatenate([np.arange(r.num_tokens) for r in g]) for g in groups],
            pa.int32(),
        ),
        "token_class": lists([cat(g, "token_class") for g in groups], pa.uint8()),
        "segment_ids": lists(
            [np.concatenate([np.full(r.num_tokens, k) for k, r in enumerate(g)]) for g in groups], pa.int32()
        ),
        "num_tokens": pa.array([sum(r.num_tokens for r in g) for g in groups], type=pa.int32()),
        "num_loss_tokens": pa.array([sum(r.num_loss_tokens for r in g) for g in groups], type=pa.int32()),
        "source": pa.array([[r.source for r in g] for g in groups], type=pa.list_(pa.string())),
        "record_index": pa.array([[r.record_index for r in g] for g in groups], type=pa.list_(pa.int64())),
        "part": pa.array([[r.part for r in g] for g in groups], type=pa.list_(pa.int32())),
        "flags": pa.array([[r.flags for r in g] for g in groups], type=pa.list_(pa.uint32())),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in PACKED_SHARD_SCHEMA], schema=PACKED_SHARD_SCHEMA)


def write_packed_shard(path: Path, groups: Sequence[Sequence[Row]], batch_rows: int) -> dict[str, Any]:
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, PACKED_SHARD_SCHEMA, options=options) as writer:
        for start in range(0, len(groups), batch_rows):
            writer.write_batch(packed_batch(groups[start : start + batch_rows]))
    rows = [r for g in groups for r in g]
    return {
        "file": path.name,
        "rows": len(groups),
        "tokens": sum(r.num_tokens for r in rows),
        "loss_tokens": sum(r.num_loss_tokens for r in rows),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def group_rows(rows: list[Row], sizes: Sequence[int]) -> list[list[Row]]:
    """Consecutive rows grouped by `sizes` (cycled) into packed rows."""
    groups, at, k = [], 0, 0
    while at < len(rows):
        size = max(1, sizes[k % len(sizes)])
        groups.append(rows[at : at + size])
        at += size
        k += 1
    return groups


def write_shard_folder(
    out: Path,
    docs: Sequence[Document],
    *,
    packed: bool = False,
    rows_per_shard: int = 50,
    batch_rows: int = 16,
    pack_sizes: Sequence[int] = (3, 1, 2),
    vocab_size: int = 1024,
) -> Path:
    """A folder with shards + `_manifest.json` as `prepare` writes it (the fields consumers read)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [shifted_row(doc, i) for i, doc in enumerate(docs)]
    units: list[Any] = group_rows(rows, pack_sizes) if packed else rows
    shards = []
    for index, start in enumerate(range(0, len(units), rows_per_shard)):
        chunk = units[start : start + rows_per_shard]
        path = out / shard_name(index)
        if packed:
            shards.append(write_packed_shard(path, chunk, batch_rows))
        else:
            shards.append(write_shard(path, chunk, batch_rows).to_dict())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "layout": LAYOUT_PACKED if packed else LAYOUT_ROWS,
        "config": {"tokenizer": str(TOKENIZER)},
        "tokenizer": {"vocab_size": vocab_size, "special_tokens": {}},
        "shards": shards,
        "totals": {
            "rows": len(units),
            "tokens": sum(r.num_tokens for r in rows),
            "loss_tokens": sum(r.num_loss_tokens for r in rows),
        },
        "records": {"read": len(docs), "written": len(docs), "rejected": 0, "dropped": 0, "by_reason": {}},
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The builders above, plus `write(docs, **options)` into a fresh folder (session-scoped, so hypothesis
    tests can use it: each call gets its own folder)."""

    def write(docs: Sequence[Document], **options: Any) -> Path:
        return write_shard_folder(tmp_path_factory.mktemp("synthetic") / "shards", docs, **options)

    return SimpleNamespace(
        write=write,
        random_documents=random_documents,
        shifted_row=shifted_row,
        group_rows=group_rows,
        packed_batch=packed_batch,
        tokenizer=TOKENIZER,
        fixtures=FIXTURES,
    )


def shard_documents(directory: Path) -> list[Document]:
    """Every document of a shard folder, unshifted, read straight from the shard columns (not through the export
    code): tokens = a segment's input_ids + its last target, counted = [0] + its loss_mask."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(directory), format="arrow").to_table()
    columns = table.to_pydict()
    docs: list[Document] = []
    for r in range(table.num_rows):
        inputs, targets, mask = columns["input_ids"][r], columns["target_ids"][r], columns["loss_mask"][r]
        segments = columns["segment_ids"][r] if "segment_ids" in columns else [0] * len(inputs)
        start = 0
        for end in [*(k for k in range(1, len(inputs)) if segments[k] != segments[k - 1]), len(inputs)]:
            tokens = np.array([*inputs[start:end], targets[end - 1]], dtype=np.int64)
            counted = np.array([0, *mask[start:end]], dtype=np.uint8)
            docs.append((tokens, counted))
            start = end
    return docs


@pytest.fixture(scope="session")
def packed_prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures prepared with `--pack 256` (several shards)."""
    out = tmp_path_factory.mktemp("packed") / "shards"
    inputs = sorted(str(p) for p in (FIXTURES / "data").glob("*.json*"))
    config = PrepareConfig.from_mapping(
        {"inputs": inputs, "tokenizer": str(TOKENIZER), "out": str(out), "pack": 256, "shard_max_rows": 40}
    )
    prepare(config)
    return out
