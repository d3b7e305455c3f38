"""Read a shard folder written by `lossmask prepare`, one Arrow record batch at a time.

Rows come out as `Example`s (numpy arrays of one row, copied out of the record batch so that holding a few does
not pin whole batches in memory). Memory stays bounded by one record batch plus what the caller keeps, whatever
the size of the dataset. Both layouts of `lossmask.schemas.shards` are read: plain rows (one document, segment 0)
and packed rows (several documents, `segment_ids` per position).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..pipeline.errors import SetupError
from ..schemas.shards import MANIFEST_NAME

POSITION_COLUMNS = ("input_ids", "target_ids", "loss_mask", "position_ids")


@dataclass(slots=True)
class Example:
    """One row of a shard, already shifted: the model reads input_ids and is scored on target_ids where loss_mask."""

    input_ids: np.ndarray  # (n,) int64
    target_ids: np.ndarray  # (n,) int64
    loss_mask: np.ndarray  # (n,) uint8
    position_ids: np.ndarray  # (n,) int64, restart at 0 in each document
    segment_ids: np.ndarray  # (n,) int32, document of each position within the row (all 0 for plain rows)
    index: int = -1  # row number in the whole shard set, in order
    source: str = ""  # 'file:line' of the record (packed rows: of each document, comma-separated)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def cut(self, length: int) -> Example:
        """The first `length` positions (a row longer than the model's context loses its tail)."""
        if self.num_tokens <= length:
            return self
        return Example(
            self.input_ids[:length],
            self.target_ids[:length],
            self.loss_mask[:length],
            self.position_ids[:length],
            self.segment_ids[:length],
            self.index,
            self.source,
        )


@dataclass
class ShardSet:
    """A shard folder: its shard files in order and what the manifest says about them."""

    root: Path
    files: list[Path]
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> ShardSet:
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise SetupError(f"{root} has no {MANIFEST_NAME}; pass the --out folder of `lossmask prepare`")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SetupError(f"{manifest_path} is not valid JSON: {exc}") from None
        files = [root / shard["file"] for shard in manifest.get("shards", [])]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise SetupError(f"shard(s) listed in {manifest_path} are missing: {', '.join(missing)}")
        if not files:
            raise SetupError(f"{manifest_path} lists no shards: nothing to train on")
        return cls(root=root, files=files, manifest=manifest)

    @property
    def vocab_size(self) -> int:
        try:
            return int(self.manifest["tokenizer"]["vocab_size"])
        except (KeyError, TypeError, ValueError):
            raise SetupError(f"{self.root / MANIFEST_NAME} has no tokenizer.vocab_size") from None

    @property
    def tokenizer_path(self) -> str | None:
        return (self.manifest.get("config") or {}).get("tokenizer")

    @property
    def num_rows(self) -> int:
        return sum(int(shard.get("rows", 0)) for shard in self.manifest.get("shards", []))

    def examples(self, start: int = 0) -> Iterator[Example]:
        """Every row from row `start` on, in shard order, reading one record batch at a time."""
        index = 0
        for path, info in zip(self.files, self.manifest["shards"], strict=True):
            rows = int(info.get("rows", -1))
            if rows >= 0 and index + rows <= start:  # the manifest's counts let us skip whole shards
                index += rows
                continue
            with pa.memory_map(str(path), "r") as source:
                reader = pa.ipc.open_file(source)
                check_columns(reader.schema, path)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    if index + batch.num_rows <= start:
                        index += batch.num_rows
                        continue
                    for example in batch_examples(batch, index):
                        if example.index >= start:
                            yield example
                    index += batch.num_rows


def check_columns(schema: pa.Schema, path: Path) -> None:
    missing = [name for name in POSITION_COLUMNS if name not in schema.names]
    if missing:
        raise SetupError(f"{path} is not a lossmask shard: no column(s) {', '.join(missing)}")


def batch_examples(batch: pa.RecordBatch, first_index: int) -> Iterator[Example]:
    """The rows of one record batch as Examples, each array copied out of the batch's buffers."""
    names = [*POSITION_COLUMNS, "segment_ids"] if "segment_ids" in batch.schema.names else list(POSITION_COLUMNS)
    values: dict[str, np.ndarray] = {}
    for name in names:
        column = batch.column(name)
        values[name] = column.flatten().to_numpy(zero_copy_only=False)  # the values of these rows, back to back
        if name == "input_ids":
            lengths = np.diff(column.offsets.to_numpy())
        elif not np.array_equal(np.diff(column.offsets.to_numpy()), lengths):
            raise SetupError(f"row lengths differ between input_ids and {name}: not a lossmask shard")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    sources = batch.column("source").to_pylist() if "source" in batch.schema.names else [""] * batch.num_rows
    for row in range(batch.num_rows):
        lo, hi = int(starts[row]), int(starts[row + 1])
        segments = values["segment_ids"][lo:hi] if "segment_ids" in values else np.zeros(hi - lo, dtype=np.int32)
        yield Example(
            input_ids=values["input_ids"][lo:hi].astype(np.int64),
            target_ids=values["target_ids"][lo:hi].astype(np.int64),
            loss_mask=values["loss_mask"][lo:hi].astype(np.uint8),
            position_ids=values["position_ids"][lo:hi].astype(np.int64),
            segment_ids=segments.astype(np.int32),
            index=first_index + row,
            source=", ".join(sources[row]) if isinstance(sources[row], list) else str(sources[row]),
        )
