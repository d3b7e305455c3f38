"""Between the engine and the writer: rows arrive one record at a time, in input order, and leave as shard rows.

- `Passthrough` (no packing): each record's rows, as they are.
- `Packer` (`--pack N`): buffers a window of documents (`--pack-window`, by default 100,000; 0 = the whole
  dataset), packs the window with best-fit decreasing (`binpack`) into rows of at most N positions once it is
  full, and emits those rows in the order their bins were opened. A window ends only after a whole record.
- `Concatenator` (`--concat N`): lays the documents end to end and cuts a row every N positions; a document that
  crosses a row boundary becomes two pieces (flagged WINDOW, numbered by `part`), each with positions from 0.

Every output carries `resume`: how a killed run makes everything after it again. The job checkpoints after a
finished shard; a resumed run re-reads records from `resume[0]` (the records before the checkpoint's
`next_record` are processed again but not counted again), hands them to a combiner built with `resume`, and
that combiner skips what was already written: the first `resume[1]` rows of its first window (Packer), or the
first `resume[1]` positions of record `resume[0]` (Concatenator, whose next piece of that record is numbered
`resume[2]`). Windows and rows depend only on the records from the window's start, so the rows made again are
the same bytes. `counts` are the running totals up to the output, restored from the checkpoint likewise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..schemas.shards import RowFlag
from .binpack import best_fit_decreasing
from .packed import PackedRow
from .shift import Row

_WINDOW = int(RowFlag.WINDOW)


@dataclass(slots=True)
class Output:
    rows: list[Any]  # written together, never split over two shards: one record's Rows, or one PackedRow
    resume: tuple[int, ...]  # replay state after these rows (see the module's docstring)
    counts: dict[str, int] = field(default_factory=dict)  # running totals, including these rows


class Combiner(Protocol):
    def add(self, index: int, rows: list[Row]) -> list[Output]: ...

    def finish(self) -> list[Output]: ...


class Passthrough:
    """One output per record that has rows."""

    def add(self, index: int, rows: list[Row]) -> list[Output]:
        return [Output(rows, (index + 1,))] if rows else []

    def finish(self) -> list[Output]:
        return []


class Packer:
    """`--pack N`: best-fit decreasing over windows of whole documents."""

    def __init__(self, length: int, window: int, resume: tuple[int, ...] = (0,), counts: dict[str, int] | None = None):
        self.length = length
        self.window = window
        self.start = resume[0]  # first record of the current window
        self.skip = resume[1] if len(resume) > 1 else 0  # rows of this window already written
        self.next_index = self.start
        self.documents: list[Row] = []
        self.counts = {"documents": 0, "rows": 0, "tokens": 0, "loss_tokens": 0, **(counts or {})}

    def add(self, index: int, rows: list[Row]) -> list[Output]:
        self.next_index = index + 1
        for row in rows:
            if row.num_tokens > self.length:
                raise ValueError(f"{row.source}: {row.num_tokens} positions do not fit --pack {self.length}")
            self.documents.append(_compact(row))
        if self.window and len(self.documents) >= self.window:
            return self._close()
        return []

    def finish(self) -> list[Output]:
        return self._close() if self.documents else []

    def _close(self) -> list[Output]:
        documents, self.documents = self.documents, []
        bins = best_fit_decreasing([d.num_tokens for d in documents], self.length)
        outputs = []
        for number, items in enumerate(bins, start=1):
            if number <= self.skip:
                continue
            row = PackedRow([documents[i] for i in items])
            self.counts["documents"] += len(items)
            self.counts["rows"] += 1
            self.counts["tokens"] += row.num_tokens
            self.counts["loss_tokens"] += row.num_loss_tokens
            resume = (self.next_index, 0) if number == len(bins) else (self.start, number)
            outputs.append(Output([row], resume, dict(self.counts)))
        self.start, self.skip = self.next_index, 0
        return outputs


class Concatenator:
    """`--concat N`: the documents as one stream, cut into rows of exactly N positions (the last may be shorter).

    A row with no counted target (possible only when documents have untrained tokens) is dropped and counted.
    """

    def __init__(self, length: int, resume: tuple[int, ...] = (0,), counts: dict[str, int] | None = None):
        self.length = length
        self.skip_record = resume[0]
        self.skip_positions = resume[1] if len(resume) > 1 else 0
        self.skip_piece = resume[2] if len(resume) > 2 else 0
        self.next_index = resume[0]
        self.pending: list[Row] = []
        self.pending_cut: list[bool] = []  # whether each pending piece is part of a document cut across rows
        self.pending_positions = 0
        base = {"documents": 0, "segments": 0, "segments_cut": 0, "rows": 0, "tokens": 0, "loss_tokens": 0}
        self.counts = {**base, "rows_dropped": 0, **(counts or {})}

    def add(self, index: int, rows: list[Row]) -> list[Output]:
        self.next_index = index + 1
        skip, piece = (self.skip_positions, self.skip_piece) if index == self.skip_record else (0, 0)
        done = skip  # positions of this record consumed, across its rows
        total = sum(r.num_tokens for r in rows)
        outputs: list[Output] = []
        for row in rows:
            n = row.num_tokens
            start = min(skip, n)
            skip -= start
            while start < n:
                take = min(n - start, self.length - self.pending_positions)
                whole = take == n
                self.counts["documents"] += start == 0
                self.pending.append(_piece(row, start, start + take, piece, whole))
                self.pending_cut.append(not whole)
                self.pending_positions += take
                start += take
                done += take
                piece += 1
                if self.pending_positions == self.length:
                    resume = (index + 1, 0, 0) if done == total else (index, done, piece)
                    outputs.extend(self._emit(resume))
        return outputs

    def finish(self) -> list[Output]:
        return self._emit((self.next_index, 0, 0)) if self.pending else []

    def _emit(self, resume: tuple[int, ...]) -> list[Output]:
        row, cut = PackedRow(self.pending), sum(self.pending_cut)
        self.pending, self.pending_cut, self.pending_positions = [], [], 0
        if row.num_loss_tokens == 0:
            self.counts["rows_dropped"] += 1
            return []
        self.counts["segments"] += len(row.documents)
        self.counts["segments_cut"] += cut
        self.counts["rows"] += 1
        self.counts["tokens"] += row.num_tokens
        self.counts["loss_tokens"] += row.num_loss_tokens
        return [Output([row], resume, dict(self.counts))]


def _compact(row: Row) -> Row:
    """A copy that owns its memory (one token buffer for inputs and targets), so a window holds only its rows."""
    tokens = np.empty(row.num_tokens + 1, dtype=np.int32)
    tokens[:-1] = row.input_ids
    tokens[-1:] = row.target_ids[-1:]
    return Row(
        input_ids=tokens[:-1],
        target_ids=tokens[1:],
        loss_mask=np.array(row.loss_mask, dtype=np.uint8),
        token_class=np.array(row.token_class, dtype=np.uint8),
        source=row.source,
        record_index=row.record_index,
        part=row.part,
        flags=row.flags,
    )


def _piece(row: Row, start: int, end: int, part: int, whole: bool) -> Row:
    return Row(
        input_ids=row.input_ids[start:end],
        target_ids=row.target_ids[start:end],
        loss_mask=row.loss_mask[start:end],
        token_class=row.token_class[start:end],
        source=row.source,
        record_index=row.record_index,
        part=part,
        flags=row.flags if whole else row.flags | _WINDOW,
    )
