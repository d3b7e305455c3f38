"""One work unit's output: its shards and its rejects, written the same way whoever writes them.

A job whose rows go straight to shards (no packing, concatenation, dedup or sampling: `jobs.units`) writes each
unit (`pipeline.units`) on its own: the unit's rows into `shard-u<unit>-<k>.arrow` (`write.unit_shard_name`), its
rejected and dropped records into `_rejects-u<unit>.jsonl`, and a `UnitSummary` of what it wrote. The main
process of the local engine feeds a `UnitWriter` with its workers' batch results; a Ray task feeds one with the
batches it processes itself (`run_unit`). Either way the files depend on the unit's records alone, so the bytes
are the same on any engine, worker count or node. The job then joins the units' rejects in unit order into
`_rejects.jsonl` and writes the manifest from the summaries (`jobs.units`).

Worked example: a 150 MB JSONL file with `unit_bytes` 64 MB is three units (byte ranges cut at line starts). Unit
1 starts at global record 41,207 (the records of unit 0); with `shard_max_rows` 100,000 its 45,000 records give
`shard-u00001-000.arrow` and a `_rejects-u00001.jsonl` of its 12 rejected lines, whichever machine wrote them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..files import temp_path
from ..schemas.arrays import values
from ..schemas.layouts import LAYOUTS
from ..schemas.records import RawRecord
from .accounting import Accounting
from .batch import BatchResult, JobContext, process_batch
from .inputs import FormatTracker, batched
from .units import Unit, UnitCount, line_counts, unit_records
from .write import ShardInfo, ShardWriter, record_ranges, unit_shard_name


def rejects_part_name(unit: int) -> str:
    return f"_rejects-u{unit:05d}.jsonl"


@dataclass
class UnitSummary:
    """What one finished unit wrote: small and independent of the data's size but for its shard list."""

    unit: int
    first_index: int  # the global index of its first record
    records: int
    shards: list[ShardInfo]
    accounting: dict[str, Any]
    rejects: dict[str, Any]  # {"file", "bytes", "sha256"} of its `_rejects-u<unit>.jsonl`
    format: str | None  # its file's format as known at its end (the next unit of the same file starts from it)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shards": [s.to_dict() for s in self.shards]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitSummary:
        return cls(**{**data, "shards": [ShardInfo(**s) for s in data["shards"]]})


@dataclass
class UnitWriter:
    """Writes one unit's batch results, in record order, into its shards and its rejects part.

    `on_shard(writer)` is called after each shard it completes, at a record boundary: the main process of the
    local engine checkpoints the unit's progress there (`progress()`), so that a killed run loses at most a
    shard's work; `resume` is that progress, to go on from (the unit's first `records` records are then not
    given again)."""

    context: JobContext
    out: Path
    unit: Unit
    first_index: int
    on_shard: Callable[[UnitWriter], None] | None = None
    resume: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        config = self.context.config
        resume = self.resume or {}
        self.writer = ShardWriter(
            self.out,
            max_rows=config.shard_max_rows,
            max_bytes=config.shard_max_bytes,
            schema=LAYOUTS[config.layout][0],
            name=lambda k: unit_shard_name(self.unit.index, k),
            shards=[ShardInfo(**s) for s in resume.get("shards", [])],
        )
        self.accounting = Accounting.from_dict(resume["accounting"]) if resume else Accounting()
        self.records = resume.get("records", 0)
        self.tokens = 0
        self.rejects_path = self.out / rejects_part_name(self.unit.index)
        self.rejects_temp = temp_path(self.rejects_path)
        self.rejects_hash = hashlib.sha256()
        if resume:  # the part written up to the last checkpoint; what a killed run wrote after it goes
            self.rejects = open(self.rejects_temp, "r+b")  # noqa: SIM115 - closed by finish()
            self.rejects.truncate(resume["rejects_bytes"])
            for chunk in iter(lambda: self.rejects.read(1 << 20), b""):
                self.rejects_hash.update(chunk)
        else:
            self.rejects = open(self.rejects_temp, "wb")  # noqa: SIM115 - closed by finish()

    def add(self, result: BatchResult) -> None:
        flags = values(result.batch.column("flags"))
        ranges = record_ranges(result.batch, [outcome.rows for outcome in result.outcomes])
        position = 0
        for outcome, record_rows in zip(result.outcomes, ranges, strict=True):
            if outcome.status != "written":
                line = (outcome.to_reject_line() + "\n").encode("utf-8")
                self.rejects.write(line)
                self.rejects_hash.update(line)
            self.accounting.add(outcome)
            for row_flags in flags[position : position + outcome.rows]:
                self.accounting.add_row_flags(int(row_flags))
            position += outcome.rows
            self.records += 1
            self.tokens += record_rows.tokens
            if self.writer.add_record(record_rows) is not None and self.on_shard is not None:
                self.on_shard(self)

    def progress(self) -> dict[str, Any]:
        """The unit so far, after a completed shard: what `resume` takes (its rejects part flushed first)."""
        self.rejects.flush()
        return {
            "unit": self.unit.index,
            "records": self.records,
            "shards": [s.to_dict() for s in self.writer.shards],
            "rejects_file": self.rejects_temp.name,
            "rejects_bytes": self.rejects.tell(),
            "rejects_sha256": self.rejects_hash.hexdigest(),
            "accounting": self.accounting.to_dict(),
        }

    def finish(self, file_format: str | None) -> UnitSummary:
        self.writer.close()
        size = self.rejects.tell()
        self.rejects.flush()
        os.fsync(self.rejects.fileno())
        self.rejects.close()
        os.replace(self.rejects_temp, self.rejects_path)
        rejects = {"file": self.rejects_path.name, "bytes": size, "sha256": self.rejects_hash.hexdigest()}
        return UnitSummary(
            self.unit.index,
            self.first_index,
            self.records,
            list(self.writer.shards),
            self.accounting.to_dict(),
            rejects,
            file_format,
        )

    def abandon(self) -> None:
        """Close what is open (a stopped run); its files are this job's and a rerun replaces them."""
        self.rejects.close()


def tagged_records(unit: Unit, first_index: int, formats: FormatTracker, context: JobContext) -> Iterator[RawRecord]:
    """The unit's records, numbered from `first_index`, each tagged with its file's format."""
    for raw in unit_records(unit, first_index, context.config.max_record_bytes):
        yield formats.tag(raw)


def survey_unit(context: JobContext, unit: Unit) -> UnitCount:
    """A unit's newlines, records and format (the counting pass of a Ray job): read, never decoded but for the
    first record that decodes, whose format is the file's from there on."""
    placeholder = unit if unit.first_line is not None else dataclasses.replace(unit, first_line=1)
    formats = FormatTracker(None, context.config.format, context.format_options, str(unit.path))
    records = sum(1 for _ in tagged_records(placeholder, 0, formats, context))
    return UnitCount(line_counts(unit), records, formats.format)


def run_unit(
    context: JobContext, unit: Unit, first_index: int, known_format: str | None, out: Path | str
) -> UnitSummary:
    """Read, process and write one whole unit in this process (a Ray task's work): the bytes the local engine
    writes for it. An object-store `out` gets the unit's files uploaded when they are whole (`storage.put`:
    under their names only complete), from a scratch folder on this machine that is removed after."""
    if storage.is_url(out):
        with tempfile.TemporaryDirectory(prefix=f"lossmask-unit-{unit.index:05d}-") as scratch:
            summary = run_unit(context, unit, first_index, known_format, Path(scratch))
            for name in [*(s.file for s in summary.shards), summary.rejects["file"]]:
                storage.put(Path(scratch) / name, storage.join(str(out), name))
            return summary
    formats = FormatTracker(known_format, context.config.format, context.format_options, str(unit.path))
    writer = UnitWriter(context, Path(out), unit, first_index)
    try:
        for batch in batched(tagged_records(unit, first_index, formats, context), context.config.batch_size):
            writer.add(process_batch(batch, context))
    except BaseException:
        writer.abandon()
        raise
    return writer.finish(formats.format)
