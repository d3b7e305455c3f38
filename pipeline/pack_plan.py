"""`--pack` planned from sizes alone: which documents go into which packed row, and which rows into which shard,
exactly as `combine.Packer` feeding a `write.ShardWriter` would have them, computed from integers per document.

A cluster packs this way (`jobs.planned_pack`): the documents are written as rows first, wherever the data is; the
driver reads back only their sizes, makes the plan here, and tasks write the packed shards the plan names. The
plan uses the same three rules the streaming path does, each from its one home: where a window ends
(`combine.window_is_full`), how a window is packed (`combine.pack_window`: best-fit decreasing), and where a shard
ends (`write.shard_is_full` over `write.packed_row_bytes`). So the shards are the same bytes.

Worked example: documents of 3, 2 and 4 positions, from records 0, 0 and 1, `--pack 5`, window 0, shards of at
most 1 row:

    >>> plan = plan_packing(Sizes.of([3, 2, 4], [1, 1, 1], [4, 4, 4], [0, 0, 1]), 5, 0, 1, 1 << 20)
    >>> [plan.row(r).tolist() for r in range(plan.num_rows)]  # best-fit decreasing: 4 alone, then 3 + 2
    [[2], [0, 1]]
    >>> plan.doc_shard.tolist()  # so document 2 is in shard 0, documents 0 and 1 in shard 1
    [1, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .combine import pack_window, packing_summary, window_is_full
from .write import packed_row_bytes, shard_is_full


@dataclass(frozen=True)
class Sizes:
    """Per document (a row of the rows pass, in input order): its positions, counted targets, the UTF-8 bytes of
    its `source`, and its record's index (documents of one record are adjacent)."""

    tokens: np.ndarray
    loss_tokens: np.ndarray
    source_bytes: np.ndarray
    record_index: np.ndarray

    @classmethod
    def of(cls, tokens: object, loss_tokens: object, source_bytes: object, record_index: object) -> Sizes:
        return cls(*(np.asarray(a, dtype=np.int64) for a in (tokens, loss_tokens, source_bytes, record_index)))

    @classmethod
    def join(cls, parts: list[Sizes]) -> Sizes:
        if not parts:
            return cls.of([], [], [], [])
        return cls(*(np.concatenate([getattr(p, n) for p in parts]) for n in cls.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.tokens.size)


@dataclass
class PackPlan:
    """The packed rows (`row_docs[row_starts[r]:row_starts[r + 1]]`: row r's documents, in segment order), the
    shards (`shard_rows[s]:shard_rows[s + 1]`: shard s's rows), each document's shard, and the manifest's counts."""

    row_docs: np.ndarray
    row_starts: np.ndarray
    shard_rows: np.ndarray
    doc_shard: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.row_starts.size - 1)

    @property
    def num_shards(self) -> int:
        return int(self.shard_rows.size - 1)

    def row(self, r: int) -> np.ndarray:
        return self.row_docs[self.row_starts[r] : self.row_starts[r + 1]]

    def shard_documents(self, s: int) -> np.ndarray:
        """Shard s's documents, in the order of its rows and segments."""
        first, last = self.shard_rows[s], self.shard_rows[s + 1]
        return self.row_docs[self.row_starts[first] : self.row_starts[last]]

    def shard_row_lengths(self, s: int) -> np.ndarray:
        """How many documents each row of shard s has."""
        return np.diff(self.row_starts[self.shard_rows[s] : self.shard_rows[s + 1] + 1])

    def summary(self, length: int, window: int) -> dict[str, object]:
        """The manifest's `packing`, as `Packer.summary` gives it."""
        return packing_summary("pack", length, dict(self.counts), window=window)


def windows(record_index: np.ndarray, window: int) -> list[tuple[int, int]]:
    """The documents of each window, as [start, end) ranges: a window ends after the whole record that makes it
    full (`window_is_full`), the last one at the end of the input."""
    n = int(record_index.size)
    record_ends = np.append(np.flatnonzero(np.diff(record_index)) + 1, n) if n else np.zeros(0, dtype=np.int64)
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if not window_is_full(n - start, window):
            out.append((start, n))
            break
        # the first record end at which the window holds `window` documents or more
        end = int(record_ends[np.searchsorted(record_ends, start + window)])
        assert window_is_full(end - start, window)
        out.append((start, end))
        start = end
    return out


def plan_packing(sizes: Sizes, length: int, window: int, max_rows: int, max_bytes: int) -> PackPlan:
    """The plan of `--pack length` with `--pack-window window` over these documents, in shards of at most
    `max_rows` rows or about `max_bytes` bytes (see the module docstring)."""
    if len(sizes) and int(sizes.tokens.max()) > length:
        first = int(np.argmax(sizes.tokens > length))
        raise ValueError(f"document {first}: {int(sizes.tokens[first])} positions do not fit --pack {length}")
    rows: list[np.ndarray] = []
    for start, end in windows(sizes.record_index, window):
        for items in pack_window(sizes.tokens[start:end], length):
            rows.append(np.asarray(items, dtype=np.int64) + start)
    row_docs = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    row_starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([r.size for r in rows], out=row_starts[1:])
    row_tokens = np.add.reduceat(sizes.tokens[row_docs], row_starts[:-1]) if rows else np.zeros(0, np.int64)
    row_source = np.add.reduceat(sizes.source_bytes[row_docs], row_starts[:-1]) if rows else np.zeros(0, np.int64)
    row_bytes = [
        packed_row_bytes(int(t), int(d), int(b))
        for t, d, b in zip(row_tokens.tolist(), np.diff(row_starts).tolist(), row_source.tolist(), strict=True)
    ]
    cuts = [0]
    shard_rows = shard_bytes = 0
    for r, size in enumerate(row_bytes):
        shard_rows += 1
        shard_bytes += size
        if shard_is_full(shard_rows, shard_bytes, max_rows, max_bytes):
            cuts.append(r + 1)
            shard_rows = shard_bytes = 0
    if shard_rows:
        cuts.append(len(row_bytes))
    shard_of_row = np.repeat(np.arange(len(cuts) - 1, dtype=np.int32), np.diff(cuts))
    doc_shard = np.empty(len(sizes), dtype=np.int32)
    doc_shard[row_docs] = np.repeat(shard_of_row, np.diff(row_starts))
    counts = {
        "documents": len(sizes),
        "rows": len(rows),
        "tokens": int(sizes.tokens.sum()),
        "loss_tokens": int(sizes.loss_tokens.sum()),
    }
    return PackPlan(row_docs, row_starts, np.asarray(cuts, dtype=np.int64), doc_shard, counts)
