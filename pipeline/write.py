"""Stage 8, write: rows -> Arrow IPC shards of bounded size, each written under a temporary name and renamed
only when complete, so a reader (or a resumed run) never mistakes a half-written file for output.

Shard boundaries depend only on the rows (their order and sizes), never on how they were computed, so the
same data gives the same files whatever the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..files import file_sha256, temp_path
from ..schemas.arrays import utf8_lengths, values
from ..schemas.preference import SIDES
from ..schemas.shards import PACKED_SHARD_SCHEMA, SHARD_SCHEMA, SHARD_SUFFIX
from .faults import crash_point
from .packed import PackedRow, packed_rows_to_batch
from .shift import Row, rows_to_batch


@dataclass
class ShardInfo:
    file: str
    rows: int
    tokens: int
    loss_tokens: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}{SHARD_SUFFIX}"


def unit_shard_name(unit: int, index: int) -> str:
    """The `index`-th shard of work unit `unit` (`pipeline.units`): a unit's shards are named by the unit alone,
    so that whoever writes them (the main process, a Ray task on any node) gives the same names."""
    return f"shard-u{unit:05d}-{index:03d}{SHARD_SUFFIX}"


@dataclass(slots=True)
class RecordRows:
    """One record's rows as a range of a worker's record batch, with what the writer counts of them (computed once
    per batch by `record_ranges`, so that a record costs the writer a few additions, not Arrow calls)."""

    batch: pa.RecordBatch
    start: int
    count: int
    tokens: int
    loss_tokens: int
    size: int  # estimated bytes, as `estimated_bytes` counts them

    def slice(self) -> pa.RecordBatch:
        return self.batch.slice(self.start, self.count)


def row_sizes(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, counted targets, estimated bytes) of each row of a batch of rows (SFT or KTO) or pairs. A pair
    counts both sides' positions and counted targets, and 9 bytes (ids, targets, mask) per position of each."""
    source_bytes = utf8_lengths(batch.column("source"))
    if "num_tokens" in batch.schema.names:
        tokens = values(batch.column("num_tokens")).astype(np.int64)
        loss = values(batch.column("num_loss_tokens")).astype(np.int64)
        return tokens, loss, 14 * tokens + source_bytes + 32
    tokens = sum(np.diff(values(batch.column(f"{side}_input_ids").offsets)).astype(np.int64) for side in SIDES)
    loss = sum(values(batch.column(f"{side}_num_loss_tokens")).astype(np.int64) for side in SIDES)
    return tokens, loss, 9 * tokens + source_bytes + 32


def record_ranges(batch: pa.RecordBatch, counts: list[int]) -> list[RecordRows]:
    """The rows of each record of a batch (`counts[k]` rows for record k, in order)."""
    tokens, loss, size = row_sizes(batch)
    ends = np.cumsum(counts, dtype=np.int64)
    cumulative = [np.concatenate([[0], np.cumsum(column)]) for column in (tokens, loss, size)]
    out, start = [], 0
    for count, end in zip(counts, ends.tolist(), strict=True):
        sums = [int(c[end] - c[start]) for c in cumulative]
        out.append(RecordRows(batch, start, count, *sums))
        start = end
    return out


def estimated_bytes(row: Row | PackedRow) -> int:
    """Uncompressed size of a row: 4+4+4 bytes (ids, targets, positions) + 1+1 (mask, class) per token, + 4 for
    segment ids when packed, and each document's source (its UTF-8 bytes) and numbers."""
    if isinstance(row, PackedRow):
        source_bytes = sum(len(d.source.encode("utf-8")) for d in row.documents)
        return packed_row_bytes(row.num_tokens, len(row.documents), source_bytes)
    return 14 * row.num_tokens + len(row.source.encode("utf-8")) + 32


def packed_row_bytes(tokens: int, documents: int, source_bytes: int) -> int:
    """`estimated_bytes` of a packed row from its sizes alone (what a cluster's packing plan knows of it)."""
    return 18 * tokens + source_bytes + 32 * documents


def shard_is_full(rows: int, size: int, max_rows: int, max_bytes: int) -> bool:
    """Whether a shard of `rows` rows and `size` estimated bytes ends after the record just added: the one rule
    for where shards end (`ShardWriter`, and `pipeline.pack_plan` planning them from sizes)."""
    return rows >= max_rows or size >= max_bytes


class ShardWriter:
    """Writes rows into shards of at most `max_rows` rows or about `max_bytes` bytes, streaming.

    Rows are written to the open shard's temporary file in record batches of `batch_rows` rows as they arrive,
    so memory holds one record batch, not a shard. A shard ends only after a whole record, so that a record's
    rows (several when turns are split) are never spread over two shards and a checkpoint can say "every record
    before this one is done"; then it is closed, synced and renamed. With `packed`, the rows are `PackedRow`s
    (`PACKED_SHARD_SCHEMA`), each added on its own. `schema` is the layout's (`schemas.layouts`) when it is
    another: preference pairs or KTO rows, which arrive as ranges of a worker's batch of that schema. `name` gives
    the k-th shard's file name (`shard_name`, or a unit's `unit_shard_name`).
    """

    def __init__(
        self,
        out_dir: Path,
        max_rows: int = 100_000,
        max_bytes: int = 256 << 20,
        batch_rows: int = 1024,
        shards: list[ShardInfo] | None = None,
        packed: bool = False,
        schema: pa.Schema | None = None,
        name: Callable[[int], str] = shard_name,
    ):
        self.out_dir = out_dir
        self.name = name  # the k-th shard's file name
        self.packed = packed
        self.schema = schema or (PACKED_SHARD_SCHEMA if packed else SHARD_SCHEMA)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.batch_rows = batch_rows
        self.shards: list[ShardInfo] = list(shards or [])
        self._open: _OpenShard | None = None

    def add_record(self, rows: RecordRows | list[Row] | list[PackedRow]) -> ShardInfo | None:
        """Add one record's rows (a range of a worker's batch, `Row`s, or `PackedRow`s when packed); returns the
        shard this completed, if it did."""
        if (rows.count if isinstance(rows, RecordRows) else len(rows)) == 0:
            return None
        if self._open is None:
            path = self.out_dir / self.name(len(self.shards))
            self._open = _OpenShard(path, self.batch_rows, self.packed, self.schema)
        self._open.add(rows)
        if shard_is_full(self._open.rows, self._open.bytes, self.max_rows, self.max_bytes):
            return self._finish()
        return None

    def close(self) -> ShardInfo | None:
        return self._finish() if self._open is not None else None

    def _finish(self) -> ShardInfo:
        assert self._open is not None
        info, self._open = self._open.finish(), None
        self.shards.append(info)
        return info


class _OpenShard:
    """A shard being written: its temporary file, the rows not yet in a record batch, and running totals."""

    def __init__(self, path: Path, batch_rows: int, packed: bool = False, schema: pa.Schema | None = None):
        self.path = path
        self.batch_rows = batch_rows
        self.temp = temp_path(path)
        schema = schema or (PACKED_SHARD_SCHEMA if packed else SHARD_SCHEMA)
        self.sink = pa.OSFile(str(self.temp), "wb")
        self.writer = pa.ipc.new_file(self.sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd"))
        self.packed = packed
        self.pending: list[Any] = []  # PackedRows, or record batches of rows (`pending_rows` rows in all)
        self.pending_rows = 0
        self.rows = self.tokens = self.loss_tokens = self.bytes = 0

    def add(self, rows: pa.RecordBatch | list[Row] | list[PackedRow]) -> None:
        if self.packed:
            for row in rows:
                self.pending.append(row)
                self._count(row.num_tokens, row.num_loss_tokens, estimated_bytes(row), 1)
                if len(self.pending) == self.batch_rows:
                    self._write(packed_rows_to_batch(self.pending))
                    self.pending = []
            return
        if not isinstance(rows, RecordRows):
            batch = rows_to_batch(list(rows))
            (rows,) = record_ranges(batch, [batch.num_rows])
        self._count(rows.tokens, rows.loss_tokens, rows.size, rows.count)
        self.pending.append(rows)
        self.pending_rows += rows.count
        if self.pending_rows >= self.batch_rows:  # record batches of exactly `batch_rows` rows, as rows arrive
            table = pa.Table.from_batches(_runs(self.pending)).combine_chunks()
            written = 0
            while self.pending_rows - written >= self.batch_rows:
                self._write(one_batch(table.slice(written, self.batch_rows)))
                written += self.batch_rows
            rest = self.pending_rows - written
            self.pending = [RecordRows(one_batch(table.slice(written)), 0, rest, 0, 0, 0)] if rest else []
            self.pending_rows = rest

    def _count(self, tokens: int, loss_tokens: int, size: int, rows: int) -> None:
        self.rows += rows
        self.tokens += tokens
        self.loss_tokens += loss_tokens
        self.bytes += size

    def _write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)
        self.sink.flush()
        crash_point("shard-half-written")

    def finish(self) -> ShardInfo:
        if self.pending:
            if self.packed:
                self._write(packed_rows_to_batch(self.pending))
            else:
                self._write(one_batch(pa.Table.from_batches(_runs(self.pending))))
            self.pending = []
        self.writer.close()
        self.sink.close()
        with open(self.temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temp, self.path)
        crash_point("shard-renamed")
        return ShardInfo(
            file=self.path.name,
            rows=self.rows,
            tokens=self.tokens,
            loss_tokens=self.loss_tokens,
            bytes=self.path.stat().st_size,
            sha256=file_sha256(self.path),
        )


def write_shard(path: Path, rows: list[Any], batch_rows: int = 1024, packed: bool = False) -> ShardInfo:
    """Write one complete shard from rows already in memory."""
    shard = _OpenShard(path, batch_rows, packed)
    shard.add(rows)
    return shard.finish()


def _runs(pending: list[RecordRows]) -> list[pa.RecordBatch]:
    """The pending records' rows as record batches, one per run of adjacent ranges of the same batch: the same rows
    as a slice per record, in a handful of chunks instead of ~1,024 for `combine_chunks` to concatenate."""
    out: list[pa.RecordBatch] = []
    batch: pa.RecordBatch | None = None
    start = end = 0
    for rows in pending:
        if rows.batch is batch and rows.start == end:
            end += rows.count
            continue
        if batch is not None:
            out.append(batch.slice(start, end - start))
        batch, start, end = rows.batch, rows.start, rows.start + rows.count
    if batch is not None:
        out.append(batch.slice(start, end - start))
    if len(out) == 1 and len(pending) > 1:
        # `combine_chunks` keeps a lone chunk as the slice it is, and the IPC writer then writes it otherwise than
        # a concatenated one: two chunks keep it concatenated (into the same bytes), as a chunk per record did.
        first = pending[0].count
        (whole,) = out
        out = [whole.slice(0, first), whole.slice(first)]
    return out


def one_batch(table: pa.Table) -> pa.RecordBatch:
    """A table of one chunk per column (after `combine_chunks`) as one record batch with offsets from 0."""
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
