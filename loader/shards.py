"""Open a folder that `lossmask prepare` wrote: its manifest, its layout, and its shards, checked before use.

Everything that reads shards back (the loader, the exports, `lossmask inspect`) goes through `ShardSet`, so the
checks are made once: the manifest exists and has a schema version this code knows, every shard it lists is
there with the columns and types of its layout (`SHARD_SCHEMA` or `PACKED_SHARD_SCHEMA`) and the row count the
manifest says, and, on request, the bytes match the manifest's sha256. Shards are read in manifest order, which
is input order, never in the order a directory listing happens to give.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..pipeline.errors import SetupError
from ..pipeline.write import file_sha256
from ..schemas.shards import (
    LAYOUT_PACKED,
    LAYOUT_ROWS,
    MANIFEST_NAME,
    PACKED_SHARD_SCHEMA,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
)


@dataclass(frozen=True)
class ShardFile:
    """One shard as the manifest lists it."""

    path: Path
    rows: int
    sha256: str | None


class ShardSet:
    """The shards of one prepared folder, in manifest order.

    >>> shards = ShardSet("out/shards")            # doctest: +SKIP
    >>> shards.layout, shards.num_rows             # doctest: +SKIP
    ('rows', 652)
    >>> for index, batch in shards.iter_batches(["input_ids", "target_ids"]): ...   # doctest: +SKIP
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise SetupError(
                f"{self.directory} has no {MANIFEST_NAME}: pass a folder written by `lossmask prepare --out`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SetupError(f"{manifest_path} is not valid JSON: {exc}") from None
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SetupError(
                f"{manifest_path} has schema_version {version!r}; this lossmask reads version {SCHEMA_VERSION}"
            )
        self.layout: str = self.manifest.get("layout", LAYOUT_ROWS)
        if self.layout not in (LAYOUT_ROWS, LAYOUT_PACKED):
            raise SetupError(f"{manifest_path} has an unknown layout {self.layout!r}")
        self.schema: pa.Schema = PACKED_SHARD_SCHEMA if self.packed else SHARD_SCHEMA
        self.files: list[ShardFile] = []
        for entry in self.manifest.get("shards", []):
            path = self.directory / entry["file"]
            if not path.is_file():
                raise SetupError(f"shard {path} is listed in {MANIFEST_NAME} but missing")
            self.files.append(ShardFile(path=path, rows=int(entry["rows"]), sha256=entry.get("sha256")))

    @property
    def packed(self) -> bool:
        return self.layout == LAYOUT_PACKED

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def tokenizer_path(self) -> str | None:
        return self.manifest.get("config", {}).get("tokenizer")

    @property
    def vocab_size(self) -> int | None:
        value = self.manifest.get("tokenizer", {}).get("vocab_size")
        return None if value is None else int(value)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (reads every byte once, in 1 MiB chunks)."""
        for shard in self.files:
            if shard.sha256 is not None and file_sha256(shard.path) != shard.sha256:
                raise SetupError(f"shard {shard.path} does not match the sha256 in {MANIFEST_NAME}: it changed")

    def open(self, index: int, columns: Sequence[str] | None = None) -> pa.ipc.RecordBatchFileReader:
        """A memory-mapped reader of shard `index` that decodes only `columns` (all when None), schema checked."""
        shard = self.files[index]
        try:
            source = pa.memory_map(str(shard.path), "r")
            reader = pa.ipc.open_file(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SetupError(f"shard {shard.path} is not an Arrow IPC file: {exc}") from None
        self._check_schema(shard, reader.schema)
        if columns is None:
            return reader
        fields = [self.schema.get_field_index(name) for name in columns]
        if -1 in fields:
            unknown = [name for name, i in zip(columns, fields, strict=True) if i < 0]
            raise SetupError(f"no column {unknown} in the {self.layout} layout")
        options = pa.ipc.IpcReadOptions(included_fields=fields)
        return pa.ipc.open_file(source, options=options)

    def batches(self, index: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The record batches of shard `index`, in order, one in memory at a time; row count checked at the end."""
        reader = self.open(index, columns)
        rows = 0
        for batch_index in range(reader.num_record_batches):
            batch = reader.get_batch(batch_index)
            rows += batch.num_rows
            yield batch
        self.check_rows(index, rows)

    def iter_batches(self, columns: Sequence[str] | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(shard index, record batch) for every record batch of every shard, in order."""
        for index in range(len(self.files)):
            for batch in self.batches(index, columns):
                yield index, batch

    def check_rows(self, index: int, rows: int) -> None:
        shard = self.files[index]
        if rows != shard.rows:
            raise SetupError(f"shard {shard.path} has {rows} rows but {MANIFEST_NAME} says {shard.rows}")

    def _check_schema(self, shard: ShardFile, schema: pa.Schema) -> None:
        found = [(f.name, f.type) for f in schema]
        expected = [(f.name, f.type) for f in self.schema]
        if found != expected:
            missing = sorted({n for n, _ in expected} - {n for n, _ in found})
            detail = f"missing {missing}" if missing else f"columns {found} instead of {expected}"
            raise SetupError(f"shard {shard.path} does not have the {self.layout} layout of {MANIFEST_NAME}: {detail}")
