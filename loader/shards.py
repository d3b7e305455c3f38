"""Open a folder that `lossmask prepare` wrote: its manifest, its layout, and its shards, checked before use.

Everything that reads shards back (the loader, the exports, `lossmask inspect`, the trainer, the audit) goes
through `ShardSet`, so the checks are made once: the manifest exists and has a schema version this code knows,
every shard it lists is there with the columns and types of its layout (`LAYOUTS`: the SFT rows and packed
layouts of `schemas.shards`, the preference pairs and KTO layouts of `schemas.preference`) and the row count the
manifest says, and, on request, the bytes match the manifest's sha256: all at once
(`verify()`), or each shard the first time it is opened (`verify=True`, for readers that may never reach the
last shard). Shards are read in manifest order, which is input order, never in the order a directory listing
happens to give.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import SetupError
from ..schemas.layouts import LAYOUTS
from ..schemas.shards import LAYOUT_PACKED, LAYOUT_ROWS, MANIFEST_NAME, SCHEMA_VERSION, SHARD_SUFFIX

__all__ = ["LAYOUTS", "ShardFile", "ShardSet", "read_manifest"]


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

    def __init__(self, directory: str | Path, manifest: dict[str, Any] | None = None, *, verify: bool = False):
        """`manifest` is read from `directory` when not given; `verify` checks each shard's sha256 when first opened."""
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        self.manifest: dict[str, Any] = read_manifest(self.directory) if manifest is None else manifest
        self.verify_on_open = verify
        self._verified: set[int] = set()
        self.layout: str = self.manifest.get("layout", LAYOUT_ROWS)
        if self.layout not in LAYOUTS:
            raise SetupError(f"{manifest_path} has an unknown layout {self.layout!r}")
        self.schema, known_version = LAYOUTS[self.layout]
        version = self.manifest.get("schema_version")
        if version != known_version:
            raise SetupError(
                f"{manifest_path} has schema_version {version!r}; this lossmask reads version {known_version} "
                f"of the {self.layout} layout"
            )
        self.files: list[ShardFile] = []
        for entry in self.manifest.get("shards", []):
            path = self.directory / entry["file"]
            if not path.is_file():
                raise SetupError(f"shard {path} is listed in {MANIFEST_NAME} but missing")
            self.files.append(ShardFile(path=path, rows=int(entry["rows"]), sha256=entry.get("sha256")))

    @classmethod
    def unlisted(cls, directory: str | Path) -> ShardSet:
        """The `shard-*.arrow` files of a folder without a manifest (shards written by hand), in name order.

        There is nothing to check them against but their own schema: the layout is the one the first shard's
        metadata names, the row counts are the files' own, and there is no sha256.
        """
        directory = Path(directory)
        paths = sorted(directory.glob(f"shard-*{SHARD_SUFFIX}"))
        layout = LAYOUT_ROWS
        if paths:
            metadata = pa.ipc.open_file(str(paths[0])).schema.metadata or {}
            layout = metadata.get(b"lossmask.layout", LAYOUT_ROWS.encode()).decode()
        shards = [{"file": path.name, "rows": _count_rows(path)} for path in paths]
        version = LAYOUTS.get(layout, (None, SCHEMA_VERSION))[1]
        return cls(directory, {"schema_version": version, "layout": layout, "shards": shards})

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
        """Check every shard's sha256 against the manifest (reads every byte once)."""
        for index in range(len(self.files)):
            self.verify_shard(index)

    def verify_shard(self, index: int) -> None:
        """Check shard `index`'s sha256 against the manifest, once per ShardSet. The bytes are hashed through a
        memory map: no copy on the heap, and the pages stay cached for the reads that follow."""
        shard = self.files[index]
        if index in self._verified or shard.sha256 is None:
            return
        with pa.memory_map(str(shard.path), "r") as source:
            digest = hashlib.sha256(source.read_buffer()).hexdigest()
        if digest != shard.sha256:
            raise SetupError(f"shard {shard.path} does not match the sha256 in {MANIFEST_NAME}: it changed")
        self._verified.add(index)

    def check(self) -> None:
        """Open every shard now: the columns and types of the layout (and the sha256 with `verify=True`)."""
        for index in range(len(self.files)):
            self.open(index)

    def open(self, index: int, columns: Sequence[str] | None = None) -> pa.ipc.RecordBatchFileReader:
        """A memory-mapped reader of shard `index` that decodes only `columns` (all when None), schema checked."""
        if self.verify_on_open:
            self.verify_shard(index)
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

    def iter_batches(
        self, columns: Sequence[str] | None = None, start: int = 0
    ) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(shard index, record batch) for every record batch of every shard, in order, from row `start` on.

        Shards that end before `start` are not opened (the manifest's row counts say where they end); the record
        batch that holds row `start` comes sliced to begin there.
        """
        first = 0  # row number of the first row of the shard or batch at hand
        for index, shard in enumerate(self.files):
            if first + shard.rows <= start:
                first += shard.rows
                continue
            for batch in self.batches(index, columns):
                if first + batch.num_rows > start:
                    yield index, batch.slice(max(start - first, 0))
                first += batch.num_rows

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


def read_manifest(directory: Path) -> dict[str, Any]:
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise SetupError(f"{directory} has no {MANIFEST_NAME}: pass a folder written by `lossmask prepare --out`")
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SetupError(f"{manifest_path} is not valid JSON: {exc}") from None


def _count_rows(path: Path) -> int:
    """Rows of an Arrow IPC file, decoding only its first column."""
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=[0]))
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
