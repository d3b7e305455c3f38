"""`ShardLoader`: batches of NumPy arrays from prepared shards, for any training loop, with no framework.

    loader = ShardLoader("out/shards", batch_size=8, seed=0, rank=rank, world_size=world_size)
    for epoch in range(3):
        for batch in loader:           # one epoch; dict of arrays, see `lossmask.loader.batching`
            ...
            checkpoint["data"] = loader.state_dict()
    loader.load_state_dict(checkpoint["data"])   # a new process continues with the next batch

What it promises, and the tests check:
- every row appears exactly once per epoch across all ranks (unless `drop_last`, which keeps every rank at the
  same number of full batches, as data-parallel training needs, and skips the rows left over);
- the same seed and epoch give the same order, on any machine (see `lossmask.loader.order`);
- `state_dict()` taken after a batch, loaded into a fresh loader, continues with the next batch exactly.

Batches are either padded (`batch_size` rows, padded to the longest) or packed (`pack_length=N`: `batch_size`
sequences of exactly N positions, each filled in order with whole rows while they fit, then padded; documents
stay apart through `segment_ids`, `position_ids` and `cu_seqlens`). Batch boundaries are planned from row
lengths alone (read once, at start, from the small `num_tokens` column), so they cost no data reading and a
resumed run plans the same ones. Memory: the row lengths and the epoch order (12 bytes a row) plus at most
`window_blocks` decoded record batches.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SetupError
from .batching import RowView, collate
from .order import epoch_order, rank_rows
from .shards import ShardSet

STATE_VERSION = 1
# What a saved state must agree on with the loader that loads it: these decide the order and the batches.
_PLAN_KEYS = ("num_rows", "shards", "seed", "shuffle", "window_blocks", "rank", "world_size", "batch_size")
_PLAN_KEYS += ("pack_length", "drop_last")


@dataclass(frozen=True)
class _Plan:
    """One epoch of one rank: its rows in order, and where each batch and each sequence ends."""

    rows: np.ndarray  # global row ids of this rank, in epoch order
    sequence_ends: np.ndarray  # position in `rows` after each sequence
    batch_ends: np.ndarray  # index into `sequence_ends` after each batch


class ShardLoader:
    """Deterministic, resumable, rank-partitioned batches over a prepared shard folder.

    `pad_id` fills `input_ids` and `target_ids` on padding (any id will do: padding is False in both masks).
    `window_blocks` bounds memory and sets how far rows travel when shuffled. `verify` checks the shards'
    sha256 first. One iteration at a time: `__iter__` advances the loader's own state.
    """

    def __init__(
        self,
        shards: str | Path | ShardSet,
        batch_size: int,
        *,
        pack_length: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad_id: int = 0,
        window_blocks: int = 8,
        verify: bool = False,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if pack_length is not None and pack_length < 1:
            raise ValueError("pack_length must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range(world_size={world_size})")
        if window_blocks < 1:
            raise ValueError("window_blocks must be at least 1")
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        if verify:
            self.shards.verify()
        self.batch_size = batch_size
        self.pack_length = pack_length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad_id = pad_id
        self.window_blocks = window_blocks
        self.columns = ["input_ids", "target_ids", "loss_mask", "position_ids"]
        if self.shards.packed:
            self.columns.append("segment_ids")
        self._index_blocks()
        self._epoch = 0
        self._position = 0  # rows of this rank's epoch order already delivered
        self._plan_cache: tuple[int, _Plan] | None = None

    # -- the index: which rows live in which record batch, and how long each row is ----------------------------

    def _index_blocks(self) -> None:
        shard_of, batch_of, rows_of, lengths = [], [], [], []
        for shard in range(len(self.shards.files)):
            for batch_index, batch in enumerate(self.shards.batches(shard, ["num_tokens"])):
                shard_of.append(shard)
                batch_of.append(batch_index)
                rows_of.append(batch.num_rows)
                lengths.append(batch.column(0).to_numpy(zero_copy_only=False).astype(np.int32))
        self._block_shard = np.asarray(shard_of, dtype=np.int64)
        self._block_batch = np.asarray(batch_of, dtype=np.int64)
        self._block_rows = np.asarray(rows_of, dtype=np.int64)
        self._block_start = np.zeros(len(rows_of) + 1, dtype=np.int64)
        np.cumsum(self._block_rows, out=self._block_start[1:])
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)

    @property
    def num_rows(self) -> int:
        return int(self._block_start[-1])

    # -- planning ---------------------------------------------------------------------------------------------

    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self._block_rows, self.seed, epoch, self.shuffle, self.window_blocks)

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sequence_ends, batch_ends) for a rank's rows: padded = one row per sequence, packed = greedy fill."""
        if self.pack_length is None:
            sequence_ends = np.arange(1, rows.size + 1, dtype=np.int64)
        else:
            sequence_ends = greedy_sequences(self.lengths[rows], self.pack_length, rows)
        batch_ends = np.arange(self.batch_size, sequence_ends.size, self.batch_size, dtype=np.int64)
        if sequence_ends.size:
            batch_ends = np.append(batch_ends, sequence_ends.size)
        return sequence_ends, batch_ends

    def _plan(self, epoch: int) -> _Plan:
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        order = self._order(epoch)
        rows = rank_rows(order, self.rank, self.world_size)
        sequence_ends, batch_ends = self._split(rows)
        if self.drop_last:
            keep = min(self._full_batches(rank_rows(order, r, self.world_size)) for r in range(self.world_size))
            batch_ends = batch_ends[:keep]
        plan = _Plan(rows=rows, sequence_ends=sequence_ends, batch_ends=batch_ends)
        self._plan_cache = (epoch, plan)
        return plan

    def _full_batches(self, rows: np.ndarray) -> int:
        sequences = rows.size if self.pack_length is None else self._split(rows)[0].size
        return sequences // self.batch_size

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch (the current one)."""
        return int(self._plan(self._epoch).batch_ends.size)

    # -- iteration and state -----------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (the next iteration yields it)."""
        self._epoch, self._position = epoch, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The remaining batches of the current epoch; the state advances to the next epoch after the last one."""
        epoch = self._epoch
        plan = self._plan(epoch)
        blocks = _BlockCache(self, capacity=self.window_blocks)
        starts = np.concatenate([[0], plan.sequence_ends])
        resume_at = self._position
        first_sequence = 0
        for batch_number, last_sequence in enumerate(plan.batch_ends):
            if batch_number:
                first_sequence = int(plan.batch_ends[batch_number - 1])
            end = int(starts[last_sequence])
            if end <= resume_at:
                continue  # delivered before the state was saved
            sequences = [
                [blocks.row(int(g)) for g in plan.rows[starts[s] : starts[s + 1]]]
                for s in range(first_sequence, int(last_sequence))
            ]
            batch = collate(sequences, self.pad_id, self.pack_length)
            if batch_number == plan.batch_ends.size - 1:
                self._epoch, self._position = epoch + 1, 0
            else:
                self._position = end
            yield batch
        if self._epoch == epoch:  # an epoch with no batch for this rank (or resumed at its very end)
            self._epoch, self._position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands (JSON-serializable), with what the order depends on so a mismatch is caught."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "position": self._position, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}; this lossmask reads {STATE_VERSION}")
        identity = self._identity()
        different = [key for key in _PLAN_KEYS if state.get(key) != identity[key]]
        if different:
            detail = ", ".join(f"{k}: saved {state.get(k)!r}, now {identity[k]!r}" for k in different)
            raise ValueError(f"the saved loader state is for another order or batching ({detail})")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])

    def _identity(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for shard in self.shards.files:
            digest.update(f"{shard.path.name}:{shard.rows}:{shard.sha256}\n".encode())
        return {
            "num_rows": self.num_rows,
            "shards": digest.hexdigest()[:16],
            "seed": self.seed,
            "shuffle": self.shuffle,
            "window_blocks": self.window_blocks,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "pack_length": self.pack_length,
            "drop_last": self.drop_last,
        }


def greedy_sequences(lengths: np.ndarray, pack_length: int, rows: np.ndarray) -> np.ndarray:
    """End positions of sequences filled in order with whole rows while they fit in `pack_length` positions."""
    too_long = np.flatnonzero(lengths > pack_length)
    if too_long.size:
        row = int(rows[too_long[0]])
        raise SetupError(
            f"row {row} has {int(lengths[too_long[0]])} positions, more than pack_length={pack_length}: "
            f"prepare with --max-length {pack_length} or raise pack_length"
        )
    ends: list[int] = []
    used = 0
    for position, length in enumerate(lengths.tolist()):
        if used + length > pack_length:
            ends.append(position)
            used = 0
        used += length
    if lengths.size:
        ends.append(int(lengths.size))
    return np.asarray(ends, dtype=np.int64)


class _BlockCache:
    """Decoded record batches, least recently used evicted first: at most `capacity` in memory."""

    def __init__(self, loader: ShardLoader, capacity: int):
        self.loader = loader
        self.capacity = capacity
        self.blocks: OrderedDict[int, tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]] = OrderedDict()

    def row(self, global_row: int) -> RowView:
        loader = self.loader
        block = int(np.searchsorted(loader._block_start, global_row, side="right")) - 1
        first, columns = self._get(block)
        k = global_row - first

        def piece(name: str) -> np.ndarray:
            offsets, values = columns[name]
            return values[offsets[k] : offsets[k + 1]]

        return RowView(
            row_id=global_row,
            input_ids=piece("input_ids"),
            target_ids=piece("target_ids"),
            loss_mask=piece("loss_mask"),
            position_ids=piece("position_ids"),
            segment_ids=piece("segment_ids") if "segment_ids" in columns else None,
        )

    def _get(self, block: int) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]:
        if block in self.blocks:
            self.blocks.move_to_end(block)
            return self.blocks[block]
        loader = self.loader
        reader = loader.shards.open(int(loader._block_shard[block]), loader.columns)
        batch = reader.get_batch(int(loader._block_batch[block]))
        columns = {
            name: (batch.column(i).offsets.to_numpy(), batch.column(i).values.to_numpy())
            for i, name in enumerate(batch.schema.names)
        }
        entry = (int(loader._block_start[block]), columns)
        self.blocks[block] = entry
        if len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return entry
