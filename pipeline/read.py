"""Stage 1, read: files and globs -> `RawRecord`s, each with its file and line.

Reading never raises for bad data: a line that is not JSON, not UTF-8, or cut off by a truncated archive
becomes a `RawRecord` with an error code, so the accounting can report it with its location. Only a job-level
problem (no input matches, a file cannot be opened) raises `SetupError`.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from ..errors import SetupError
from ..schemas.records import RawRecord, SourceRef

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, globs or folders, in a stable order (sorted within each pattern, patterns in order)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
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
            else:
                raise SetupError(f"input {match!r} does not exist")
            for p in found:
                if input_kind(p) is None:
                    raise SetupError(
                        f"input {str(p)!r}: unknown file type; use .jsonl, .json, .parquet or .arrow "
                        "(optionally .gz or .zst compressed)"
                    )
                if not os.access(p, os.R_OK):
                    raise SetupError(f"input {str(p)!r} is not readable (permission denied)")
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
    return paths


def input_kind(path: Path) -> str | None:
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


def open_binary(path: Path) -> IO[bytes]:
    """The decompressed byte stream of a file (gzip and zstd by suffix)."""
    name = path.name.lower()
    raw = open(path, "rb")  # noqa: SIM115 - the caller closes the returned stream
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def iter_file(path: Path, display_name: str, start_index: int = 0) -> Iterator[RawRecord]:
    """All records of one file, in order. `start_index` is the global index of its first record."""
    kind = input_kind(path)
    if kind in ("json", "jsonl"):
        yield from _iter_json(path, display_name, start_index, arrays=kind == "json")
    elif kind == "parquet":
        yield from _iter_table_rows(_parquet_batches(path), display_name, start_index)
    elif kind == "arrow":
        yield from _iter_table_rows(_arrow_batches(path), display_name, start_index)
    else:  # pragma: no cover - expand_inputs filters these
        raise SetupError(f"unknown input type: {path}")


def iter_inputs(paths: list[Path]) -> Iterator[RawRecord]:
    """Every record of every file, decoded, in order."""
    index = 0
    for path in paths:
        for record in iter_file(path, str(path), index):
            index += 1
            yield decode(record)


def _iter_json(path: Path, name: str, start_index: int, arrays: bool) -> Iterator[RawRecord]:
    """JSONL, or a JSON array when the first non-blank character is '['. Line numbers are the file's real lines."""
    stream = open_binary(path)
    try:
        leading: list[bytes] = []
        try:
            line = stream.readline()
            while line and not line.strip():
                leading.append(line)
                line = stream.readline()
        except (EOFError, OSError, zstandard.ZstdError) as exc:
            source = SourceRef(name, len(leading) + 1, start_index)
            yield RawRecord(source, error="unreadable", detail=f"{type(exc).__name__}: {exc}")
            return
        if not line:
            return  # an empty file holds no records
        if arrays and line.lstrip().startswith(b"["):
            yield from _iter_json_array(b"".join(leading) + line, stream, name, start_index)
        else:
            yield from _iter_jsonl(iter([*leading, line]), stream, name, start_index)
    finally:
        stream.close()


def _iter_jsonl(first_lines: Iterator[bytes], stream: IO[bytes], name: str, start_index: int) -> Iterator[RawRecord]:
    index = start_index
    line_no = 0
    while True:
        try:
            raw = next(first_lines, None)
            if raw is None:
                raw = stream.readline()
        except (EOFError, OSError, zstandard.ZstdError) as exc:
            source = SourceRef(name, line_no + 1, index)
            yield RawRecord(source, error="unreadable", detail=f"{type(exc).__name__}: {exc}")
            return
        if not raw:
            return
        line_no += 1
        if not raw.strip():
            continue  # blank lines are not records
        yield RawRecord(SourceRef(name, line_no, index), line=raw)
        index += 1


def decode(record: RawRecord) -> RawRecord:
    """Decode a JSONL line (UTF-8, then JSON) in place. Separate from reading so that the CPU work runs in the
    engine's workers while one process reads lines in order."""
    if record.line is None or record.error is not None:
        return record
    raw, record.line = record.line, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        record.error, record.detail = "invalid_utf8", f"byte {exc.start}: {exc.reason}"
        return record
    try:
        record.value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        record.error, record.detail = "invalid_json", _json_error(exc)
    return record


def _iter_json_array(head: bytes, stream: IO[bytes], name: str, start_index: int) -> Iterator[RawRecord]:
    """Items of a top-level JSON array, each with the line where it starts."""
    try:
        data = head + stream.read()
    except (EOFError, OSError, zstandard.ZstdError) as exc:
        yield RawRecord(SourceRef(name, 1, start_index), error="unreadable", detail=f"{type(exc).__name__}: {exc}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        source = SourceRef(name, line, start_index)
        yield RawRecord(source, error="invalid_utf8", detail=f"byte {exc.start}: {exc.reason}")
        return
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, text.index("[") + 1)
    line = 1 + text.count("\n", 0, pos)
    index = start_index
    if pos < len(text) and text[pos] == "]":
        return
    while pos < len(text):
        source = SourceRef(name, line, index)
        try:
            value, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = _json_error(exc) + "; the rest of the array cannot be read"
            yield RawRecord(source, error="invalid_json", detail=detail)
            return
        index += 1
        yield RawRecord(source, value=value)
        next_pos = _skip_ws(text, end)
        if next_pos < len(text) and text[next_pos] == ",":
            next_pos = _skip_ws(text, next_pos + 1)
        elif next_pos < len(text) and text[next_pos] == "]":
            return
        else:
            source = SourceRef(name, line + text.count("\n", pos, next_pos), index)
            yield RawRecord(source, error="invalid_json", detail="expected ',' or ']' after an array item")
            return
        line += text.count("\n", pos, next_pos)
        pos = next_pos
    yield RawRecord(SourceRef(name, line, index), error="invalid_json", detail="the JSON array is not closed")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return "nesting too deep"


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=1024)


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Arrow IPC, file or stream format (Hugging Face `datasets` caches are streams)."""
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        except pa.ArrowInvalid:
            pass
    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def _iter_table_rows(batches: Iterator[pa.RecordBatch], name: str, start_index: int) -> Iterator[RawRecord]:
    index = start_index
    row = 0
    try:
        for batch in batches:
            for value in batch.to_pylist():
                row += 1
                yield RawRecord(SourceRef(name, row, index), value=value)
                index += 1
    except (pa.ArrowException, OSError) as exc:
        yield RawRecord(SourceRef(name, row + 1, index), error="unreadable", detail=f"{type(exc).__name__}: {exc}")
