"""The order in which rows are read in one epoch, and which rows each rank gets: a pure function of
(block sizes, seed, epoch), computed from index arithmetic alone, so that every rank computes the same order
without talking to the others and a resumed run recomputes it without reading any data.

Shuffling is two-level so that memory stays bounded: the record batches of the shards ("blocks", ~1k rows each)
are permuted, consecutive permuted blocks are grouped into windows of `window_blocks`, and the rows inside each
window are permuted. A reader therefore needs at most one window of blocks decoded at a time.

Permutations come from sorting a 64-bit hash (splitmix64) of (seed, epoch, stream, index) rather than from
`numpy.random`, whose streams NumPy does not promise to keep across versions: the same seed gives the same
order on any machine and any NumPy, which is what resuming a run after an upgrade needs.

Ranks take the epoch order round-robin: rank r reads positions r, r + W, r + 2W, ... (W = world_size), so the
ranks' rows are disjoint, cover every row once, and differ in count by at most one.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer over uint64 arrays (wrapping arithmetic): a fixed, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def stream_key(seed: int, epoch: int, stream: int) -> np.uint64:
    """One 64-bit key per (seed, epoch, stream), each part hashed in turn so nearby inputs give unrelated keys."""
    key = np.zeros(1, dtype=np.uint64)
    for part in (seed, epoch, stream):
        key = splitmix64(key ^ np.uint64(part & 0xFFFFFFFFFFFFFFFF))
    return key[0]


def permutation(n: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """A permutation of range(n) determined by (seed, epoch, stream) alone."""
    keys = splitmix64(np.arange(n, dtype=np.uint64) ^ stream_key(seed, epoch, stream))
    return np.argsort(keys, kind="stable").astype(np.int64)


def epoch_order(block_rows: np.ndarray, seed: int, epoch: int, shuffle: bool, window_blocks: int) -> np.ndarray:
    """Global row ids (rows numbered across shards in manifest order) in the order of this epoch.

    Without `shuffle`, input order. With it: blocks permuted, then rows permuted within windows of blocks.
    """
    block_rows = np.asarray(block_rows, dtype=np.int64)
    total = int(block_rows.sum())
    if not shuffle:
        return np.arange(total, dtype=np.int64)
    if window_blocks < 1:
        raise ValueError("window_blocks must be at least 1")
    block_start = np.zeros(block_rows.size + 1, dtype=np.int64)
    np.cumsum(block_rows, out=block_start[1:])
    block_order = permutation(block_rows.size, seed, epoch, stream=0)
    parts: list[np.ndarray] = []
    for window, first in enumerate(range(0, block_order.size, window_blocks)):
        blocks = block_order[first : first + window_blocks]
        rows = np.concatenate(
            [np.arange(block_start[b], block_start[b + 1], dtype=np.int64) for b in blocks]
            or [np.zeros(0, dtype=np.int64)]
        )
        parts.append(rows[permutation(rows.size, seed, epoch, stream=1 + window)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rank_rows(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The rows of `rank`: positions rank, rank + world_size, ... of the epoch order (a view, no copy)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in range(world_size={world_size})")
    return order[rank::world_size]
