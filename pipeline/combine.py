"""Between the engine and the writer: rows arrive one record at a time, in input order, and leave as shard rows.

- `Passthrough` (no packing): each record's rows, as they are.
- `Packer` (`--pack N`): buffers a window of documents (`--pack-window`, by default 100,000; 0 = the whole
  dataset), packs the window with best-fit decreasing (`binpack`) into rows of at most N positions once it is
  full, and emits those rows in the order their bins were opened. A window ends only after a whole record.
- `Concatenator` (`--concat N`): lays the documents end to end and cuts a row every N positions; a document that
  crosses a row boundary becomes two pieces (flagged WINDOW, numbered by `part`), each with positions from 0.

Every output carries `resume`, the combiner's typed state after it: how a killed run makes everything after it
again. The job checkpoints after a finished shard; a resumed run re-reads records from `resume.replay_from` (the
records before the checkpoint's `next_record` are processed again but not counted again), hands them to a
combiner built with `resume`, and that combiner skips what was already written: the first `rows_written` rows of
the window that starts at record `window_start` (`PackerResume`), or the first `positions_written` positions of
record `record`, whose next piece is numbered `next_part` (`ConcatenatorResume`). Windows and rows depend only on
the records from the window's start, so the rows made again are the same bytes. `counts` are the running totals
up to the output, restored from the checkpoint likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Self

import numpy as np

from ..schemas.shards import RowFlag
from .binpack import best_fit_decreasing
from .packed import PackedRow
from .shift import Row, rows_from_batch
from .write import RecordRows

_WINDOW = int(RowFlag.WINDOW)


Rows = RecordRows | list[Row]  # one record's rows: a range of a worker's record batch, or Row objects


def as_rows(rows: Rows) -> list[Row]:
    return rows_from_batch(rows.slice()) if isinstance(rows, RecordRows) else rows


@dataclass(frozen=True)
class ResumeState:
    """A combiner's replay state (a subclass per combiner), as the checkpoint stores it: `to_dict` / `from_dict`.
    `from_dict({})` is the state of a job that has written nothing yet."""

    @property
    def replay_from(self) -> int:
        """The first record a combiner resumed from this state must be given."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, int]) -> Self:
        return cls(**{str(name): int(value) for name, value in data.items()})


@dataclass(frozen=True)
class PassthroughResume(ResumeState):
    next_record: int = 0  # nothing is carried over: go on from this record

    @property
    def replay_from(self) -> int:
        return self.next_record


@dataclass(frozen=True)
class PackerResume(ResumeState):
    window_start: int = 0  # the first record of the window being written
    rows_written: int = 0  # rows of that window already in finished shards

    @property
    def replay_from(self) -> int:
        return self.window_start


@dataclass(frozen=True)
class ConcatenatorResume(ResumeState):
    record: int = 0  # the record whose documents are being written
    positions_written: int = 0  # its positions already in finished shards, across its rows
    next_part: int = 0  # the `part` of its next piece

    @property
    def replay_from(self) -> int:
        return self.record


@dataclass(slots=True)
class Output:
    rows: list[Any]  # written together, never split over two shards: one record's Rows, or one PackedRow
    resume: ResumeState  # replay state after these rows (see the module's docstring)
    counts: dict[str, int] = field(default_factory=dict)  # running totals, including these rows


class Combiner(Protocol):
    replay_from: int  # the first record it must be given (see `ResumeState.replay_from`)

    def add(self, index: int, rows: Rows) -> list[Output]: ...

    def finish(self) -> list[Output]: ...

    def summary(self) -> dict[str, Any] | None:
        """The manifest's `packing` (None: no packing)."""
        ...


class Passthrough:
    """One output per record that has rows."""

    def __init__(self, resume: PassthroughResume | None = None):
        self.replay_from = (resume or PassthroughResume()).replay_from

    def add(self, index: int, rows: Rows) -> list[Output]:
        count = rows.count if isinstance(rows, RecordRows) else len(rows)
        return [Output(rows, PassthroughResume(index + 1))] if count else []

    def finish(self) -> list[Output]:
        return []

    def summary(self) -> None:
        return None


class Packer:
    """`--pack N`: best-fit decreasing over windows of whole documents."""

    def __init__(
        self, length: int, window: int, resume: PackerResume | None = None, counts: dict[str, int] | None = None
    ):
        resume = resume or PackerResume()
        self.length = length
        self.window = window
        self.replay_from = resume.replay_from
        self.start = resume.window_start  # first record of the current window
        self.skip = resume.rows_written  # rows of this window already written
        self.next_index = self.start
        self.documents: list[Row] = []
        self.counts = {"documents": 0, "rows": 0, "tokens": 0, "loss_tokens": 0, **(counts or {})}

    def add(self, index: int, rows: Rows) -> list[Output]:
        self.next_index = index + 1
        for row in as_rows(rows):
            if row.num_tokens > self.length:
                raise ValueError(f"{row.source}: {row.num_tokens} positions do not fit --pack {self.length}")
            self.documents.append(_compact(row))
        if window_is_full(len(self.documents), self.window):
            return self._close()
        return []

    def finish(self) -> list[Output]:
        return self._close() if self.documents else []

    def _close(self) -> list[Output]:
        documents, self.documents = self.documents, []
        bins = pack_window([d.num_tokens for d in documents], self.length)
        outputs = []
        for number, items in enumerate(bins, start=1):
            if number <= self.skip:
                continue
            row = PackedRow([documents[i] for i in items])
            self.counts["documents"] += len(items)
            self.counts["rows"] += 1
            self.counts["tokens"] += row.num_tokens
            self.counts["loss_tokens"] += row.num_loss_tokens
            resume = PackerResume(self.next_index, 0) if number == len(bins) else PackerResume(self.start, number)
            outputs.append(Output([row], resume, dict(self.counts)))
        self.start, self.skip = self.next_index, 0
        return outputs

    def summary(self) -> dict[str, Any]:
        return packing_summary("pack", self.length, self.counts, window=self.window)


def window_is_full(documents: int, window: int) -> bool:
    """Whether a `--pack` window of `documents` documents is packed now, after a whole record (window 0: only at
    the end of the input). The one rule for where windows end: `Packer`, and `pipeline.pack_plan` on a cluster."""
    return bool(window) and documents >= window


def pack_window(sizes: list[int] | np.ndarray, length: int) -> list[list[int]]:
    """One window's packed rows: best-fit decreasing of its documents' positions into rows of `length`, each row
    its documents' indices (into `sizes`) in input order, rows in the order they were opened."""
    return best_fit_decreasing(sizes, length)


class Concatenator:
    """`--concat N`: the documents as one stream, cut into rows of exactly N positions (the last may be shorter).

    A row with no counted target (possible only when documents have untrained tokens) is dropped and counted.
    """

    def __init__(self, length: int, resume: ConcatenatorResume | None = None, counts: dict[str, int] | None = None):
        self.resume = resume or ConcatenatorResume()
        self.length = length
        self.replay_from = self.resume.replay_from
        self.next_index = self.resume.record
        self.pending: list[Row] = []
        self.pending_cut: list[bool] = []  # whether each pending piece is part of a document cut across rows
        self.pending_positions = 0
        base = {"documents": 0, "segments": 0, "segments_cut": 0, "rows": 0, "tokens": 0, "loss_tokens": 0}
        self.counts = {**base, "rows_dropped": 0, **(counts or {})}

    def add(self, index: int, rows: Rows) -> list[Output]:
        rows = as_rows(rows)
        self.next_index = index + 1
        resumed = index == self.resume.record
        skip, piece = (self.resume.positions_written, self.resume.next_part) if resumed else (0, 0)
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
                    resume = ConcatenatorResume(index + 1) if done == total else ConcatenatorResume(index, done, piece)
                    outputs.extend(self._emit(resume))
        return outputs

    def finish(self) -> list[Output]:
        return self._emit(ConcatenatorResume(self.next_index)) if self.pending else []

    def summary(self) -> dict[str, Any]:
        return packing_summary("concat", self.length, self.counts)

    def _emit(self, resume: ConcatenatorResume) -> list[Output]:
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


def packing_summary(mode: str, length: int, counts: dict[str, int], **settings: int) -> dict[str, Any]:
    """The manifest's `packing`: fill rate = tokens / (rows x N), the share of N-position rows that holds tokens
    (what a trainer that pads every row to N uses); padding overhead = 1 - fill rate."""
    fill = counts["tokens"] / (counts["rows"] * length) if counts["rows"] else 0.0
    overhead = 1.0 - fill if counts["rows"] else 0.0
    return {"mode": mode, "length": length, **settings, **counts, "fill_rate": fill, "padding_overhead": overhead}


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
