"""The trainer's rows: a shard folder opened through the loader's `ShardSet`, read one record batch at a time.

`open_shards` gives the trainer the checks every reader of shards gets (a manifest of a known schema version, the
columns and types of its layout, the row counts it lists) and also the sha256 of each shard, on by default:
training on bytes that are not the ones `prepare` wrote and the audit passed would prove nothing. Checking costs
one extra read of a shard, so it is made once per shard, when the shard is first opened, not once an epoch.

Rows come out as `Example`s (numpy arrays of one row, copied out of the record batch so that holding a few does
not pin whole batches in memory). Memory stays bounded by one record batch plus what the caller keeps, whatever
the size of the dataset. Both layouts of `lossmask.schemas.shards` are read: plain rows (one document, segment 0)
and packed rows (several documents, `segment_ids` per position). The pairs layout of `lossmask.schemas.preference`
(`--objective dpo`) comes out as `Pair`s: its chosen and its rejected side, each an `Example` of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import SetupError
from ..loader.batching import RowView
from ..loader.shards import ShardSet
from ..schemas.preference import LAYOUT_PAIRS, SIDES
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS, MANIFEST_NAME

POSITION_COLUMNS = ("input_ids", "target_ids", "loss_mask", "position_ids")
SIDE_COLUMNS = ("input_ids", "target_ids", "loss_mask")  # per position, for each side of a pair


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

    @property
    def trainable(self) -> bool:
        """Whether any target counts (a row without one teaches nothing and is skipped)."""
        return bool(self.loss_mask.any())

    @property
    def max_id(self) -> int:
        return max(int(self.input_ids.max()), int(self.target_ids.max())) if self.num_tokens else -1

    def view(self) -> RowView:
        """The row as the loader's `collate` takes it (its documents are where `segment_ids` changes)."""
        return RowView(self.index, self.input_ids, self.target_ids, self.loss_mask, self.position_ids, self.segment_ids)


@dataclass(slots=True)
class Pair:
    """One row of a pairs shard: the same prompt followed by the chosen and by the rejected completion."""

    chosen: Example
    rejected: Example

    @property
    def index(self) -> int:
        return self.chosen.index

    @property
    def num_tokens(self) -> int:
        return self.chosen.num_tokens + self.rejected.num_tokens

    @property
    def num_loss_tokens(self) -> int:
        return self.chosen.num_loss_tokens + self.rejected.num_loss_tokens

    @property
    def trainable(self) -> bool:
        """Both sides need a counted target: a side with none has no sequence log-probability to compare."""
        return self.chosen.trainable and self.rejected.trainable

    @property
    def max_id(self) -> int:
        return max(self.chosen.max_id, self.rejected.max_id)

    def cut(self, length: int) -> Pair:
        """Each side's first `length` positions (the prompt stays the same on both)."""
        chosen, rejected = self.chosen.cut(length), self.rejected.cut(length)
        return self if chosen is self.chosen and rejected is self.rejected else Pair(chosen, rejected)


def open_shards(root: str | Path, pairs: bool = False) -> ShardSet:
    """The shard folder to train on or explain: checked, each shard's sha256 verified when first opened. SFT reads
    rows (plain or packed); `pairs` (DPO) reads the pairs layout, and each refuses the other's."""
    shards = ShardSet(root, verify=True)
    if not shards.files:
        raise SetupError(f"{shards.directory / MANIFEST_NAME} lists no shards: nothing to train on")
    expected = (LAYOUT_PAIRS,) if pairs else (LAYOUT_ROWS, LAYOUT_PACKED)
    if shards.layout not in expected:
        hint = ": train preference pairs with --objective dpo" if shards.layout == LAYOUT_PAIRS else ""
        raise SetupError(f"{shards.directory} has the {shards.layout} layout, not {' or '.join(expected)}{hint}")
    vocab_size_of(shards)
    return shards


def vocab_size_of(shards: ShardSet) -> int:
    """The vocabulary the shards' ids come from, which sizes the model's embeddings."""
    if shards.vocab_size is None:
        raise SetupError(f"{shards.directory / MANIFEST_NAME} has no tokenizer.vocab_size")
    return shards.vocab_size


def iter_examples(shards: ShardSet, start: int = 0) -> Iterator[Example]:
    """Every row from row `start` on, in shard order, reading one record batch at a time."""
    columns = [*POSITION_COLUMNS, "segment_ids", "source"] if shards.packed else [*POSITION_COLUMNS, "source"]
    index = start
    for _, batch in shards.iter_batches(columns, start):
        yield from batch_examples(batch, index)
        index += batch.num_rows


def iter_pairs(shards: ShardSet, start: int = 0) -> Iterator[Pair]:
    """Every pair from row `start` on, in shard order, reading one record batch at a time."""
    columns = [f"{side}_{name}" for side in SIDES for name in SIDE_COLUMNS] + ["source"]
    index = start
    for _, batch in shards.iter_batches(columns, start):
        sides = [batch_examples(batch, index, prefix=f"{side}_") for side in SIDES]
        for chosen, rejected in zip(*sides, strict=True):
            yield Pair(chosen, rejected)
        index += batch.num_rows


def batch_examples(batch: pa.RecordBatch, first_index: int, prefix: str = "") -> Iterator[Example]:
    """The rows of one record batch as Examples, each array copied out of the batch's buffers. `prefix` picks one
    side of a pair (`chosen_`, `rejected_`); a side has no position or segment columns: it is one document from 0."""
    names = [n for n in (*POSITION_COLUMNS, "segment_ids") if prefix + n in batch.schema.names]
    values: dict[str, np.ndarray] = {}
    for name in names:
        column = batch.column(prefix + name)
        values[name] = column.flatten().to_numpy(zero_copy_only=False)  # the values of these rows, back to back
        if name == "input_ids":
            lengths = np.diff(column.offsets.to_numpy())
        elif not np.array_equal(np.diff(column.offsets.to_numpy()), lengths):
            raise SetupError(f"row lengths differ between {prefix}input_ids and {prefix}{name}: not a lossmask shard")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    sources = batch.column("source").to_pylist()
    for row in range(batch.num_rows):
        lo, hi = int(starts[row]), int(starts[row + 1])
        positions = values["position_ids"][lo:hi] if "position_ids" in values else np.arange(hi - lo)
        segments = values["segment_ids"][lo:hi] if "segment_ids" in values else np.zeros(hi - lo, dtype=np.int32)
        yield Example(
            input_ids=values["input_ids"][lo:hi].astype(np.int64),
            target_ids=values["target_ids"][lo:hi].astype(np.int64),
            loss_mask=values["loss_mask"][lo:hi].astype(np.uint8),
            position_ids=positions.astype(np.int64),
            segment_ids=segments.astype(np.int32),
            index=first_index + row,
            source=", ".join(sources[row]) if isinstance(sources[row], list) else str(sources[row]),
        )
