"""Stage 8, write: rows -> Arrow IPC shards of bounded size, each written under a temporary name and renamed
only when complete, so a reader (or a resumed run) never mistakes a half-written file for output.

Shard boundaries depend only on the rows (their order and sizes), never on how they were computed, so the
same data gives the same files whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..schemas.shards import PACKED_SHARD_SCHEMA, SHARD_SCHEMA, SHARD_SUFFIX
from .faults import crash_point
from .packed import PackedRow, packed_rows_to_batch
from .shift import Row, rows_to_batch

TEMP_SUFFIX = ".tmp"
TEMP_PREFIX = "."  # hidden while incomplete: dataset readers skip it, and it is never taken for a finished shard


def temp_path(path: Path) -> Path:
    return path.with_name(TEMP_PREFIX + path.name + TEMP_SUFFIX)


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


def estimated_bytes(row: Row | PackedRow) -> int:
    """Uncompressed size of a row: 4+4+4 bytes (ids, targets, positions) + 1+1 (mask, class) per token, + 4 for
    segment ids when packed, and each document's source and numbers."""
    if isinstance(row, PackedRow):
        return 18 * row.num_tokens + sum(len(d.source) + 32 for d in row.documents)
    return 14 * row.num_tokens + len(row.source) + 32


class ShardWriter:
    """Collects rows and writes a shard once it holds `max_rows` rows or about `max_bytes` bytes.

    A shard ends only after a whole record, so that a record's rows (several when turns are split) are never
    spread over two shards and a checkpoint can say "every record before this one is done". With `packed`, the
    rows are `PackedRow`s (`PACKED_SHARD_SCHEMA`), each added on its own.
    """

    def __init__(
        self,
        out_dir: Path,
        max_rows: int = 100_000,
        max_bytes: int = 256 << 20,
        batch_rows: int = 1024,
        shards: list[ShardInfo] | None = None,
        packed: bool = False,
    ):
        self.out_dir = out_dir
        self.packed = packed
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.batch_rows = batch_rows
        self.shards: list[ShardInfo] = list(shards or [])
        self._pending: list[Any] = []
        self._pending_bytes = 0

    def add_record(self, rows: list[Row] | list[PackedRow]) -> ShardInfo | None:
        """Add one record's rows; returns the shard this completed, if it did."""
        for row in rows:
            self._pending.append(row)
            self._pending_bytes += estimated_bytes(row)
        if len(self._pending) >= self.max_rows or self._pending_bytes >= self.max_bytes:
            return self._flush()
        return None

    def close(self) -> ShardInfo | None:
        return self._flush() if self._pending else None

    def _flush(self) -> ShardInfo:
        rows, self._pending, self._pending_bytes = self._pending, [], 0
        info = write_shard(self.out_dir / shard_name(len(self.shards)), rows, self.batch_rows, self.packed)
        self.shards.append(info)
        return info


def write_shard(path: Path, rows: list[Any], batch_rows: int = 1024, packed: bool = False) -> ShardInfo:
    temp = temp_path(path)
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    schema, to_batch = (PACKED_SHARD_SCHEMA, packed_rows_to_batch) if packed else (SHARD_SCHEMA, rows_to_batch)
    with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, schema, options=options) as writer:
        for start in range(0, len(rows), batch_rows):
            writer.write_batch(to_batch(rows[start : start + batch_rows]))
            sink.flush()
            crash_point("shard-half-written")
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    crash_point("shard-renamed")
    return ShardInfo(
        file=path.name,
        rows=len(rows),
        tokens=sum(r.num_tokens for r in rows),
        loss_tokens=sum(r.num_loss_tokens for r in rows),
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
