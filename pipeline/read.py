"""Stage 1, read: files and globs -> `RawRecord`s, each with its file and line.

Reading never raises for bad data: a line that is not JSON, not UTF-8, longer than the record limit, or cut off
by a truncated archive becomes a `RawRecord` with an error code, so the accounting can report it with its
location. Only a job-level problem (no input matches, a file cannot be opened) raises `SetupError`. Memory is
bounded per record: `framing` cuts records out of the decompressed stream (`compression`) without ever holding
more than `max_record_bytes` of one.
"""

from __future__ import annotations

import glob
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import SetupError
from ..files import file_sha256
from ..schemas.records import RawRecord, SourceRef
from .compression import READ_ERRORS, DecompressedStream
from .formats.options import MAX_RECORD_BYTES
from .framing import BOM, Piece, ReadFailed, split_records

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


# An input file: a local path, or an object behind a URL (`storage.RemoteFile`), which reading opens alike.
InputFile = Path | storage.RemoteFile


def input_size(path: InputFile) -> int:
    if isinstance(path, storage.RemoteFile):
        with storage.reading(path):
            return path.size
    return path.stat().st_size


def input_sha256(path: InputFile) -> str:
    """An input's sha256: of the file's bytes, or of an object's bytes as streamed (`storage.sha256`)."""
    if isinstance(path, storage.RemoteFile):
        with storage.reading(path):
            return storage.sha256(path)
    return file_sha256(Path(path))


def expand_inputs(patterns: list[str]) -> list[InputFile]:
    """Files named by paths, globs or folders, in a stable order (sorted within each pattern, patterns in order).
    A URL (`s3://bucket/prefix/*.jsonl`, a folder `s3://bucket/prefix/`) names objects (`storage.expand`)."""
    paths: list[InputFile] = []
    seen: set[InputFile] = set()
    for pattern in patterns:
        if storage.is_url(pattern):
            objects = storage.expand(pattern, lambda f: input_kind(f) is not None)
            if not objects:
                raise SetupError(f"input {pattern!r} matches no object")
            for obj in objects:
                if input_kind(obj) is None:
                    raise _unknown_type(obj.url)
                if obj not in seen:
                    seen.add(obj)
                    paths.append(obj)
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SetupError(f"input {pattern!r} matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p) is not None)
                if not found:
                    raise SetupError(f"input folder {match!r} holds no JSONL, JSON, Parquet or Arrow file")
            elif path.is_file():
                found = [path]
            elif path.exists() or path.is_symlink():
                raise SetupError(
                    f"input {match!r} is {_file_kind(path)}, not a regular file: lossmask reads each input twice "
                    "(its checksum, then its records), which a pipe or device cannot give; copy it to a file first"
                )
            else:
                raise SetupError(f"input {match!r} does not exist")
            for p in found:
                if input_kind(p) is None:
                    raise _unknown_type(str(p))
                if not os.access(p, os.R_OK):
                    raise SetupError(f"input {str(p)!r} is not readable (permission denied)")
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
    return paths


def _unknown_type(name: str) -> SetupError:
    return SetupError(
        f"input {name!r}: unknown file type; use .jsonl, .json, .parquet or .arrow (optionally .gz or .zst compressed)"
    )


def _file_kind(path: Path) -> str:
    if not path.exists():
        return "a broken symbolic link"
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def input_kind(path: InputFile) -> str | None:
    """'jsonl' (always one record per line), 'json' (a JSON array, or JSONL when it does not start with '['),
    'parquet' or 'arrow', each possibly compressed; None when unknown."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    return None


def iter_file(
    path: InputFile, display_name: str, start_index: int = 0, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[RawRecord]:
    """All records of one file, in order. `start_index` is the global index of its first record. A record longer
    than `max_record_bytes` is skipped to its end without being held, and comes out as `record_too_large`."""
    kind = input_kind(path)
    if kind in ("json", "jsonl"):
        yield from _iter_json(path, display_name, start_index, kind == "json", max_record_bytes)
    elif kind == "parquet":
        yield from _iter_table_rows(_parquet_batches(path), display_name, start_index, max_record_bytes)
    elif kind == "arrow":
        yield from _iter_table_rows(_arrow_batches(path), display_name, start_index, max_record_bytes)
    else:  # pragma: no cover - expand_inputs filters these
        raise SetupError(f"unknown input type: {path}")


def iter_inputs(paths: list[InputFile], max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """Every record of every file, decoded, in order."""
    index = 0
    for path in paths:
        for record in iter_file(path, str(path), index, max_record_bytes):
            index += 1
            yield decode(record)


def _iter_json(path: InputFile, name: str, start_index: int, arrays: bool, max_bytes: int) -> Iterator[RawRecord]:
    """JSONL, or a JSON array when the first non-blank character is '['. Line numbers are the file's real lines."""
    with DecompressedStream(path) as stream:

        def read(size: int) -> bytes:
            try:
                return stream.read(size)
            except READ_ERRORS as exc:
                raise ReadFailed(f"{type(exc).__name__}: {exc}, {stream.where()}") from None

        yield from json_records(split_records(read, max_bytes, arrays), name, start_index, max_bytes)


def json_records(pieces: Iterator[Piece], name: str, start_index: int, max_bytes: int) -> Iterator[RawRecord]:
    """The framed pieces of a JSON stream as records numbered from `start_index`."""
    for index, piece in enumerate(pieces, start_index):
        source = SourceRef(name, piece.line, index, piece.item)
        if piece.error is not None:
            yield RawRecord(source, error=piece.error, detail=piece.detail)
        elif piece.data is None:
            yield RawRecord(source, error="record_too_large", detail=_too_large(piece.size, max_bytes))
        else:
            yield RawRecord(source, line=piece.data)


def _too_large(size: int, max_bytes: int) -> str:
    return f"{size:,} bytes; max_record_bytes is {max_bytes:,}"


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys must be unique: with two, which value the data means is a guess (json keeps the last)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))  # type: ignore[func-returns-value]
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def decode(record: RawRecord) -> RawRecord:
    """Decode a JSONL line or JSON array item (UTF-8, then JSON) in place. Separate from reading so that the CPU
    work runs in the engine's workers while one process reads lines in order."""
    if record.line is None or record.error is not None:
        return record
    raw, record.line = record.line, None
    if raw.startswith(BOM):  # files joined with `cat`, each with its byte order mark
        raw = raw[len(BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        record.error, record.detail = "invalid_utf8", f"byte {exc.start}: {exc.reason}"
        return record
    try:
        record.value = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        record.error, record.detail = "invalid_json", _json_error(exc)
    except _DuplicateKey as exc:
        record.error, record.detail = "duplicate_key", f"the key {exc.args[0]!r} appears twice in one object"
    return record


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}" if exc.lineno == 1 else f"{exc.msg} at line +{exc.lineno - 1}"
    return "nesting too deep"


# Table rows become Python values this many bytes at a time, at most about: a batch of large rows is converted
# piece by piece, never all at once.
TABLE_SLICE_BYTES = 8 << 20


def parquet_file(path: InputFile) -> pq.ParquetFile:
    return pq.ParquetFile(path.open_random() if isinstance(path, storage.RemoteFile) else path)


def _parquet_batches(path: InputFile, row_groups: range | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of at most 1024 rows, fewer when the file's rows are large (from its row groups' sizes); of the
    row groups `row_groups` only, when given (a work unit)."""
    file = parquet_file(path)
    metadata = file.metadata
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    row_bytes = max((g.total_byte_size / g.num_rows for g in groups if g.num_rows), default=1.0)
    size = max(1, min(1024, int(TABLE_SLICE_BYTES // max(row_bytes, 1.0))))
    if row_groups is None:
        yield from file.iter_batches(batch_size=size)
    elif len(row_groups):
        yield from file.iter_batches(batch_size=size, row_groups=list(row_groups))


def _arrow_batches(path: InputFile) -> Iterator[pa.RecordBatch]:
    """Arrow IPC, file or stream format (Hugging Face `datasets` caches are streams)."""

    def source() -> Any:
        return path.open_random() if isinstance(path, storage.RemoteFile) else pa.memory_map(str(path))

    with source() as opened:
        try:
            reader = pa.ipc.open_file(opened)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        except pa.ArrowInvalid:
            pass
    with source() as opened:
        yield from pa.ipc.open_stream(opened)


def _iter_table_rows(
    batches: Iterator[pa.RecordBatch], name: str, start_index: int, max_bytes: int, first_row: int = 0
) -> Iterator[RawRecord]:
    """Rows as records numbered from `start_index`, their rows (1-based) counted after `first_row` rows."""
    index = start_index
    row = first_row
    try:
        for batch in batches:
            for value, size in _batch_values(batch, max_bytes):
                row += 1
                source = SourceRef(name, row, index)
                index += 1
                if isinstance(value, RawRecord):  # a row that cannot be a value: its reason, here with its place
                    value.source = source
                    yield value
                else:
                    yield RawRecord(source, value=value, extra={"bytes": size})
    except (pa.ArrowException, OSError) as exc:
        yield RawRecord(SourceRef(name, row + 1, index), error="unreadable", detail=f"{type(exc).__name__}: {exc}")


def _batch_values(batch: pa.RecordBatch, max_bytes: int) -> Iterator[tuple[Any, int]]:
    """(value, bytes) per row of a batch, the value a RawRecord saying why for a row that cannot be one: larger
    than `max_bytes` (measured in Arrow, before any Python object is made) or not UTF-8."""
    if not batch.num_rows:
        return
    step = max(1, int(TABLE_SLICE_BYTES * batch.num_rows // max(batch.nbytes, 1)))
    for offset in range(0, batch.num_rows, step):
        piece = batch.slice(offset, step)
        if piece.nbytes <= max_bytes:
            try:
                values = piece.to_pylist()
            except UnicodeDecodeError:
                pass  # find the row, below
            else:
                average = piece.nbytes // piece.num_rows
                yield from ((value, average) for value in values)
                continue
        for i in range(piece.num_rows):
            row = piece.slice(i, 1)
            yield _row_value(row, max_bytes), row.nbytes


_NOWHERE = SourceRef("", 0)


def _row_value(row: pa.RecordBatch, max_bytes: int) -> Any:
    if row.nbytes > max_bytes:
        return RawRecord(_NOWHERE, error="record_too_large", detail=_too_large(row.nbytes, max_bytes))
    try:
        return row.to_pylist()[0]
    except UnicodeDecodeError as exc:
        return RawRecord(_NOWHERE, error="invalid_utf8", detail=f"a string cell, byte {exc.start}: {exc.reason}")
