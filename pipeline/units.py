"""Work units: a job's inputs cut into deterministic pieces that can be read apart, numbered in input order.

A unit is one of:

- whole files (JSON arrays, compressed files, Arrow, and any file at most `unit_bytes` long): consecutive
  ones, as many as fit in `unit_bytes` together (so that a job of many small files does not get as many tiny
  shards), a larger one alone;
- a byte range of an uncompressed JSONL file (`.jsonl`, `.ndjson`) larger than `unit_bytes`: the file is cut
  near every multiple of `unit_bytes`, each cut moved forward to the start of the next line, so a record is never
  split and every unit begins at a line start;
- a range of row groups of a Parquet file larger than `unit_bytes` (row groups taken in order until their
  uncompressed size reaches `unit_bytes`; a unit has at least one).

Planning (`plan_units`) only reads a few bytes around each cut (and Parquet footers), never the data, so it costs
the same for a large input as for a small one, wherever it lives. Units depend on the files and `unit_bytes`
alone, never on the engine or the worker count.

What a unit cannot know by itself is what precedes it: the line a byte range starts on, and the global index of
its first record. Both are integers that the units before it give: `count_unit` (its newlines and records, a
pass that runs per unit, wherever its unit is read) then `number_units` (running sums, on whoever plans).
`unit_records` then yields exactly the records, sources and errors that reading the whole file gives
(`read.iter_file`), for that unit's part: concatenated in unit order they are the file's records
(`tests/pipeline/test_units.py`, for arbitrary unit sizes).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import storage
from ..schemas.records import RawRecord, SourceRef
from .compression import READ_ERRORS
from .formats.options import MAX_RECORD_BYTES
from .framing import ReadFailed, split_records
from .read import (
    COMPRESSION_SUFFIXES,
    InputFile,
    _iter_table_rows,
    _parquet_batches,
    input_kind,
    iter_file,
    json_records,
    parquet_file,
)

UNIT_BYTES = 64 << 20
_SCAN = 1 << 16  # bytes read at a time when looking for the next line start after a cut (after smaller first reads)
_FIRST_SCAN = 1 << 10


@dataclass(frozen=True)
class Unit:
    """One unit: `kind` "file" (all of `path`, and all of each of `more`, in order), "bytes" (bytes [start, end)
    of a JSONL file, starting at line `first_line`, None until numbered) or "row_groups" (row groups [start, end)
    of a Parquet file, after `first_row` rows)."""

    index: int
    path: InputFile
    kind: str
    start: int = 0
    end: int = 0
    first_line: int | None = 1
    first_row: int = 0
    more: tuple[InputFile, ...] = ()  # the files after `path` in a "file" unit

    @property
    def files(self) -> tuple[InputFile, ...]:
        return (self.path, *self.more)

    def describe(self) -> str:
        if self.kind == "file":
            return " + ".join(str(f) for f in self.files)
        return f"{self.path} [{self.kind} {self.start}-{self.end})"


def _size(path: InputFile) -> int:
    return path.size if isinstance(path, storage.RemoteFile) else Path(path).stat().st_size


def _open(path: InputFile) -> IO[bytes] | Any:
    return path.open_random() if isinstance(path, storage.RemoteFile) else open(path, "rb")


def _splittable_jsonl(path: InputFile) -> bool:
    return input_kind(path) == "jsonl" and not path.name.lower().endswith(COMPRESSION_SUFFIXES)


def plan_units(paths: list[InputFile], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """The units of these files, in input order (see the module docstring). Byte ranges' `first_line` is None:
    `number_lines` fills it."""
    if unit_bytes < 1:
        raise ValueError("unit_bytes must be positive")
    units: list[Unit] = []
    group: list[InputFile] = []  # whole files not yet in a unit, `grouped` bytes together
    grouped = 0

    def close_group() -> None:
        nonlocal group, grouped
        if group:
            units.append(Unit(len(units), group[0], "file", more=tuple(group[1:])))
        group, grouped = [], 0

    for path in paths:
        size = _size(path)
        pieces: list[tuple[str, int, int, int | None, int]] = []
        if _splittable_jsonl(path) and size > unit_bytes:
            cuts = _line_cuts(path, size, unit_bytes)
            pieces = [("bytes", a, b, 1 if a == 0 else None, 0) for a, b in itertools.pairwise(cuts)]
        elif input_kind(path) == "parquet" and size > unit_bytes:
            pieces = _row_group_ranges(path, unit_bytes)
        if len(pieces) <= 1:  # a whole file: with the files before it, while they fit in one unit together
            if group and grouped + size > unit_bytes:
                close_group()
            group.append(path)
            grouped += size
            continue
        close_group()
        for kind, start, end, first_line, first_row in pieces:
            units.append(Unit(len(units), path, kind, start, end, first_line, first_row))
    close_group()
    return units


def _line_cuts(path: InputFile, size: int, unit_bytes: int) -> list[int]:
    """0, the line start at or after each multiple of `unit_bytes` (the byte after the first newline at or after
    the byte before it), and the file's size; each once, in order."""
    cuts = [0]
    with _open(path) as handle:
        target = unit_bytes
        while target < size:
            position = max(target - 1, cuts[-1])
            handle.seek(position)
            cut = size
            scan = _FIRST_SCAN
            while position < size:
                chunk = handle.read(min(scan, size - position))
                scan = min(2 * scan, _SCAN)
                if not chunk:
                    break
                newline = chunk.find(b"\n")
                if newline >= 0:
                    cut = position + newline + 1
                    break
                position += len(chunk)
            if cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            target = max(target + unit_bytes, cut + 1)
    cuts.append(size)
    return cuts


def _row_group_ranges(path: InputFile, unit_bytes: int) -> list[tuple[str, int, int, int | None, int]]:
    try:
        metadata = parquet_file(path).metadata
    except READ_ERRORS:
        return []  # unreadable: one unit, whose reading says why
    ranges = []
    start, rows, before, held = 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        info = metadata.row_group(group)
        held += info.total_byte_size
        rows += info.num_rows
        if held >= unit_bytes or group == metadata.num_row_groups - 1:
            ranges.append(("row_groups", start, group + 1, 1, before))
            start, before, held = group + 1, rows, 0
    return ranges


def line_counts(unit: Unit) -> int:
    """The newlines in a byte-range unit (0 for other kinds): what the next unit of its file starts after."""
    if unit.kind != "bytes":
        return 0
    count = 0
    with _open(unit.path) as handle:
        handle.seek(unit.start)
        remaining = unit.end - unit.start
        while remaining > 0:
            chunk = handle.read(min(1 << 20, remaining))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def number_lines(units: list[Unit], counts: list[int]) -> list[Unit]:
    """The units with every byte range's `first_line`, from the newline counts of the units before it in its
    file (`line_counts` of each unit, in order)."""
    out: list[Unit] = []
    line = 1
    for unit, count in zip(units, counts, strict=True):
        if unit.kind == "bytes":
            if unit.start == 0:
                line = 1
            out.append(dataclasses.replace(unit, first_line=line))
            line += count
        else:
            out.append(unit)
    return out


@dataclass(frozen=True)
class UnitCount:
    """What the units after one need of it: its newlines (a byte range's; 0 otherwise), its records, and the
    format its first decodable record has (None when it has none, or when not asked: `unit_writer.survey_unit`)."""

    lines: int
    records: int
    format: str | None = None


def count_unit(unit: Unit, max_record_bytes: int = MAX_RECORD_BYTES) -> UnitCount:
    """A unit's newlines and records, by reading it (wherever it is read: a pass per unit, no Python value made
    of a record). A byte range is counted before its first line is known: its records do not depend on it."""
    placeholder = unit if unit.first_line is not None else dataclasses.replace(unit, first_line=1)
    records = sum(1 for _ in unit_records(placeholder, 0, max_record_bytes))
    return UnitCount(line_counts(unit), records)


def number_units(units: list[Unit], counts: list[UnitCount]) -> list[tuple[Unit, int]]:
    """Each unit with its first line (`number_lines`) and the global index of its first record: the running sum
    of the records of the units before it. Integers only: the planner needs no input bytes."""
    numbered = number_lines(units, [c.lines for c in counts])
    starts, total = [], 0
    for count in counts:
        starts.append(total)
        total += count.records
    return list(zip(numbered, starts, strict=True))


def unit_records(unit: Unit, start_index: int = 0, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """The records of one unit, numbered from `start_index`, as reading the whole file gives them."""
    name = str(unit.path)
    if unit.kind == "file":
        index = start_index
        for path in unit.files:
            for record in iter_file(path, str(path), index, max_record_bytes):
                index += 1
                yield record
    elif unit.kind == "row_groups":
        batches = _parquet_batches(unit.path, range(unit.start, unit.end))
        yield from _iter_table_rows(batches, name, start_index, max_record_bytes, unit.first_row)
    elif unit.kind == "bytes":
        if unit.first_line is None:
            raise ValueError(f"unit {unit.describe()} has no first line: number_lines first")
        yield from _byte_range_records(unit, name, start_index, max_record_bytes)
    else:  # pragma: no cover - plan_units makes only these
        raise ValueError(f"unknown unit kind {unit.kind!r}")


def _byte_range_records(unit: Unit, name: str, start_index: int, max_bytes: int) -> Iterator[RawRecord]:
    try:
        handle = _open(unit.path)
    except READ_ERRORS as exc:
        yield RawRecord(SourceRef(name, unit.first_line or 1, start_index), error="unreadable", detail=str(exc))
        return
    with closing(handle):
        remaining = unit.end - unit.start

        def read(size: int) -> bytes:
            nonlocal remaining
            try:
                data = handle.read(min(size, remaining)) if remaining > 0 else b""
            except READ_ERRORS as exc:
                raise ReadFailed(f"{type(exc).__name__}: {exc}, after byte {unit.end - remaining}") from None
            remaining -= len(data)
            return data

        handle.seek(unit.start)
        pieces = split_records(read, max_bytes, False, first_line=unit.first_line or 1, strip_bom=unit.start == 0)
        yield from json_records(pieces, name, start_index, max_bytes)
