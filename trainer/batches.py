"""Rows -> (B, T) batches: cut, shuffle in a bounded buffer, pad to the longest row of the batch.

Batching rules (docs/trainer.md):
- A row longer than `--seq-len` L keeps its first L positions; the rest is not trained (the model has only L
  position embeddings, and a tail without its beginning would be a different example). A row left with no
  counted target is skipped. Both are counted and reported.
- Rows are not packed here: each batch is padded to its longest row (at most L). Padding has segment -1,
  loss_mask 0, input and target id 0: it attends to nothing, nothing attends to it, and it never counts.
- Order: a shuffle buffer of `--shuffle-buffer` rows, drawn with the run's seed, over the rows in shard order;
  memory is the buffer, not the dataset. The stream restarts at the end of the data (a new epoch).
- Pairs (`--objective dpo`) follow the same rules, a pair as one item: both sides are cut to L, a pair is skipped
  when either side is left with no counted target, and B pairs become one `PairBatch` of 2B padded rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

import numpy as np

from ..errors import SetupError
from ..loader import ShardSet
from ..loader import collate as collate_sequences
from .shards import Example, Pair, iter_examples, vocab_size_of

PAD_SEGMENT = -1
PAD_ID = 0


@dataclass
class Batch:
    """B rows padded to T positions. segment_ids is -1 on padding, which is how the model and loss know it.

    The arrays of the loader's batch (`lossmask.loader.batching`) the model and the loss read, by the same names.
    """

    input_ids: np.ndarray  # (B, T) int64
    target_ids: np.ndarray  # (B, T) int64
    loss_mask: np.ndarray  # (B, T) bool (or 0/1)
    position_ids: np.ndarray  # (B, T) int64
    segment_ids: np.ndarray  # (B, T) int64, -1 = padding

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) positions."""
        return int((self.segment_ids != PAD_SEGMENT).sum())

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def collate(rows: list[Example], length: int | None = None) -> Batch:
    """Stack rows into (B, T), T = the longest row (or `length`), padding on the right: the loader's `collate`,
    one row per sequence."""
    batch = collate_sequences([[row.view()] for row in rows], PAD_ID, length)
    return Batch(**{field.name: batch[field.name] for field in fields(Batch)})


@dataclass
class PairBatch:
    """B pairs as one (2B, T) batch: rows [0, B) are the chosen sides, rows [B, 2B) the rejected sides, in the same
    order, padded together, so that one forward pass scores both sides of every pair."""

    rows: Batch

    @property
    def num_pairs(self) -> int:
        return self.rows.input_ids.shape[0] // 2

    @property
    def num_tokens(self) -> int:
        return self.rows.num_tokens

    @property
    def num_loss_tokens(self) -> int:
        return self.rows.num_loss_tokens


def collate_pairs(pairs: list[Pair]) -> PairBatch:
    return PairBatch(collate([p.chosen for p in pairs] + [p.rejected for p in pairs]))


class Item(Protocol):
    """What the stream handles: an `Example` (a row) or a `Pair`."""

    @property
    def index(self) -> int: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def num_loss_tokens(self) -> int: ...
    @property
    def trainable(self) -> bool: ...
    @property
    def max_id(self) -> int: ...
    def cut(self, length: int) -> Any: ...


T = TypeVar("T", bound=Item)


@dataclass
class StreamStats:
    """What the first pass over the data kept and lost (later epochs repeat it)."""

    rows: int = 0
    rows_cut: int = 0
    rows_skipped: int = 0  # no counted target within the first L positions
    targets: int = 0  # counted targets kept
    targets_cut: int = 0  # counted targets beyond L
    complete: bool = False  # every row has been read once (otherwise the counts cover the rows read so far)

    def to_dict(self) -> dict[str, int | bool]:
        return dict(vars(self))


def fitted(examples: Iterable[T], seq_len: int, vocab_size: int, stats: StreamStats | None) -> Iterator[T]:
    """Cut rows (or pairs) to `seq_len`, drop those left with nothing to train, refuse ids outside the vocabulary."""
    for example in examples:
        kept = example.cut(seq_len)
        if stats is not None:
            stats.rows += 1
            stats.rows_cut += kept is not example
            stats.targets_cut += example.num_loss_tokens - kept.num_loss_tokens
        if kept.max_id >= vocab_size:
            raise SetupError(f"row {example.index} has a token id >= the vocabulary size {vocab_size}")
        if not kept.trainable:
            if stats is not None:
                stats.rows_skipped += 1
            continue
        if stats is not None:
            stats.targets += kept.num_loss_tokens
        yield kept
    if stats is not None:
        stats.complete = True


def shuffled(items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """A streaming shuffle: keep `buffer_size` rows, emit a random one as each new row arrives."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        pick = int(rng.integers(buffer_size))
        yield buffer[pick]
        buffer[pick] = item
    for pick in rng.permutation(len(buffer)):
        yield buffer[pick]


def training_batches(
    shards: ShardSet,
    batch_size: int,
    seq_len: int,
    rng: np.random.Generator,
    shuffle_buffer: int = 1024,
    stats: StreamStats | None = None,
    read: Callable[[ShardSet], Iterator[Any]] = iter_examples,
    stack: Callable[[list[Any]], Any] = collate,
) -> Iterator[tuple[int, Any]]:
    """Endless (epoch, batch) pairs over the shards. Batches never mix epochs: an epoch's last one may be smaller.
    `read` and `stack` make rows and batches of them: `iter_examples` and `collate` (SFT) or `iter_pairs` and
    `collate_pairs` (DPO)."""
    epoch = 0
    while True:
        rows = fitted(read(shards), seq_len, vocab_size_of(shards), stats if epoch == 0 else None)
        pending: list[Any] = []
        produced = False
        for example in shuffled(rows, shuffle_buffer, rng):
            pending.append(example)
            if len(pending) == batch_size:
                produced = True
                yield epoch, stack(pending)
                pending = []
        if pending:  # the last, smaller batch of the epoch
            produced = True
            yield epoch, stack(pending)
        if not produced:
            raise SetupError(f"no row of {shards.directory} has a counted target within the first {seq_len} positions")
        epoch += 1


def first_rows(
    shards: ShardSet, count: int, seq_len: int, read: Callable[[ShardSet], Iterator[Any]] = iter_examples
) -> list[Any]:
    """The first `count` usable rows (or pairs) in shard order: the fixed set evaluated before and after."""
    rows: list[Any] = []
    for example in fitted(read(shards), seq_len, vocab_size_of(shards), None):
        if len(rows) >= count:
            break
        rows.append(example)
    return rows
