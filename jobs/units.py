"""The unit job: a `prepare` whose rows go straight to shards, written work unit by work unit.

A job reads every record of its files once, in file order, and writes each record's rows as they are (no
`--pack`, `--concat`, `dedup`, `datasets:` or `eval:`, which combine or choose records across the whole input and
stay on the record stream of `jobs.prepare`). Its inputs are cut into work units (`pipeline.units`), and each
unit's rows go to shards of its own (`pipeline.unit_writer`), so that any unit can be written anywhere, in any
order, and the output is the same bytes:

- **local** engine: the main process reads the units in order and its worker pool processes their batches, as
  for any job; a `UnitWriter` per unit writes what comes back. One unit's shards are written at a time.
- **ray** engine: the driver plans only. Ray tasks hash the input files (the fingerprints), count each unit's
  records (so each unit knows the global index of its first record), then read, process and write one unit each,
  wherever they run, and return its summary. The driver never reads input records: it handles integers and
  summaries (`tests/test_units_job.py` measures it).

Either way, the checkpoint lists the finished units (their summaries); a resumed run redoes only the others. At
the end the job joins the units' rejects parts, in unit order, into `_rejects.jsonl`, and writes the manifest
from the summaries: what it would have written from one pass over the records.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import engines
from ..engines import local
from ..files import temp_path, write_json
from ..pipeline.accounting import Accounting
from ..pipeline.batch import JobContext
from ..pipeline.config import PrepareConfig
from ..pipeline.inputs import FormatTracker, InputPlan, batched
from ..pipeline.unit_writer import UnitSummary, UnitWriter, tagged_records
from ..pipeline.units import Unit, line_counts, number_lines, plan_units
from ..pipeline.write import ShardInfo
from ..schemas.shards import MANIFEST_NAME, REJECTS_NAME
from .checkpoint import CHECKPOINT_NAME, Checkpoint
from .manifest import build_manifest, digest_of, fingerprints, input_size
from .outdir import claim
from .remote import BucketUnits, RemoteOut
from .signals import check_stop

Progress = Callable[[int, int], None]


def is_unit_job(config: PrepareConfig, plan: InputPlan, part: str) -> bool:
    """Whether this part of the job is written unit by unit (see the module docstring)."""
    return (
        part == "train"
        and not plan.has_eval
        and config.pack is None
        and config.concat is None
        and config.dedup is None
        and plan.single_stream(part) is not None
    )


def run_unit_job(
    config: PrepareConfig,
    plan: InputPlan,
    progress: Progress | None,
    remote: RemoteOut | None,
    prints: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the job unit by unit; returns its manifest, as `jobs.prepare._run` does. With Ray and an
    object-store `--out`, the tasks write to the bucket and the job's state lives there (`remote.BucketUnits`);
    otherwise in the local `--out` (an object store's staging folder, published after). `prints`: the inputs'
    fingerprints when the caller has them (a planned pack's rows pass), so the inputs are not hashed twice."""
    started = time.perf_counter()
    if config.engine == "local" and sum(input_size(p) for p in plan.paths) >= local.START_SERVER_MIN_BYTES:
        local.start_server(config)  # boots while this process builds its context
    context = JobContext.from_config(config)
    out = Path(config.out)
    units = plan_units(plan.paths, config.unit_bytes)
    with _engine(config) as engine:
        prints = prints or fingerprints(config, context, plan.paths, engine.hashes)
        digest = digest_of(config, prints)
        if remote is not None:
            remote.claim("train", digest, engine.verify)
        checkpoint = claim(out, digest, resume=config.resume, overwrite=config.overwrite)
        target: LocalTarget | BucketUnits = LocalTarget(out)
        if remote is not None and config.engine == "ray":
            target = BucketUnits(remote.url)
            checkpoint = target.load(digest, engine.verify) if config.resume else None
        if checkpoint is None:
            checkpoint = Checkpoint(digest, rejects_sha256=hashlib.sha256().hexdigest(), unit_total=len(units))
            target.save(checkpoint, first=True)  # before anything else: what this run writes is provably its own
        if engine.needs_counts and not checkpoint.unit_counts:  # once per job: a resumed run has them
            checkpoint.unit_counts = engine.count(units)
            target.save(checkpoint)
        done = {int(k): UnitSummary.from_dict(v) for k, v in checkpoint.units.items()}

        def finished_shards() -> list[ShardInfo]:
            return [s for u in sorted(done) for s in done[u].shards]

        def save_progress(writer: UnitWriter) -> None:  # the local engine's unit in progress, after a shard
            checkpoint.partial = writer.progress()
            checkpoint.shards = finished_shards() + list(writer.writer.shards)
            target.save(checkpoint)

        work = engine.run(context, units, done, checkpoint, target.where_units(), progress, save_progress)
        saved = 0.0
        for summary in work:
            check_stop()
            done[summary.unit] = summary
            checkpoint.units[str(summary.unit)] = summary.to_dict()
            if checkpoint.partial.get("unit") == summary.unit:
                checkpoint.partial = {}
            if time.monotonic() - saved >= engine.checkpoint_seconds:
                checkpoint.shards = finished_shards()
                target.save(checkpoint)
                saved = time.monotonic()
        check_stop()
        checkpoint.shards = finished_shards()
    summaries = [done[unit.index] for unit in units]
    accounting = Accounting()
    for summary in summaries:
        accounting.merge(Accounting.from_dict(summary.accounting))
    accounting.check()
    parts = [summary.rejects["file"] for summary in summaries]
    rejects_file = target.join_rejects(parts, checkpoint)
    shards: list[ShardInfo] = [s for summary in summaries for s in summary.shards]
    manifest = build_manifest(config, context, prints, accounting, shards)
    manifest["rejects"] = rejects_file
    manifest["encoder"] = {"name": context.tokenizer.encoder.name, "note": context.encoder_note}
    manifest["datasets"] = plan.manifest_datasets("train", [accounting.to_dict()], prints)
    target.write_manifest(manifest)
    target.finish(parts, checkpoint)  # the manifest now proves `_rejects.jsonl`; the parts were the checkpoint's
    manifest["_elapsed_seconds"] = time.perf_counter() - started
    if isinstance(target, BucketUnits):
        manifest["_published_to"] = target.url  # nothing for `RemoteOut.publish` to upload
    return manifest


class LocalTarget:
    """A unit job's output folder on this machine (or one every Ray worker mounts), and its checkpoint there."""

    def __init__(self, out: Path):
        self.out = out

    def where_units(self) -> str:
        return str(self.out)

    def save(self, checkpoint: Checkpoint, first: bool = False) -> None:
        if first:
            checkpoint.write(self.out)
        else:
            checkpoint.save(self.out)

    def join_rejects(self, parts: list[str], checkpoint: Checkpoint) -> dict[str, Any]:
        """`_rejects.jsonl`: the units' rejects parts in unit order. Its length and sha256 go into the checkpoint
        first, so that a run killed while writing it leaves a file that is provably this job's."""
        digest = hashlib.sha256()
        size = 0
        for name in parts:
            for chunk in _chunks(self.out / name):
                digest.update(chunk)
                size += len(chunk)
        checkpoint.rejects_bytes, checkpoint.rejects_sha256 = size, digest.hexdigest()
        checkpoint.save(self.out)
        path = self.out / REJECTS_NAME
        temp = temp_path(path)
        with open(temp, "wb") as joined:
            for name in parts:
                for chunk in _chunks(self.out / name):
                    joined.write(chunk)
            joined.flush()
            os.fsync(joined.fileno())
        temp.replace(path)
        return {"file": REJECTS_NAME, "bytes": size, "sha256": checkpoint.rejects_sha256}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.out / MANIFEST_NAME, manifest)

    def finish(self, parts: list[str], checkpoint: Checkpoint) -> None:
        for name in parts:
            (self.out / name).unlink(missing_ok=True)
        (self.out / CHECKPOINT_NAME).unlink(missing_ok=True)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk


@dataclass
class _Tag:
    """What the main process knows of one batch it hands to the local engine: its unit, and whether it is the
    unit's last (`batch` False: a unit with no records, which has no batch)."""

    unit: Unit
    first_index: int
    formats: FormatTracker
    last: bool
    batch: bool = True


class LocalUnits:
    """The local engine's units: read in order by the main process, their batches processed by the pool."""

    hashes = None  # the main process hashes the inputs itself
    verify = None  # and checks the sha256 of what a bucket holds itself
    needs_counts = False  # it reads the units in order: each one's first record index is the count so far
    checkpoint_seconds = 0.0  # a checkpoint after every unit (and every shard of the unit in progress)

    def __enter__(self) -> LocalUnits:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self,
        context: JobContext,
        units: list[Unit],
        done: dict[int, UnitSummary],
        checkpoint: Checkpoint,
        where: str,
        progress: Progress | None,
        save_progress: Callable[[UnitWriter], None],
    ) -> Iterator[UnitSummary]:
        config = context.config
        out = Path(where)
        units = _numbered_lines(units)
        partial = checkpoint.partial if checkpoint.partial.get("unit") not in done else {}
        tags: deque[_Tag] = deque()
        writers: dict[int, UnitWriter] = {}

        def writer_for(tag: _Tag) -> UnitWriter:
            writer = writers.get(tag.unit.index)
            if writer is None:
                resume = partial if partial.get("unit") == tag.unit.index else None
                writer = UnitWriter(context, out, tag.unit, tag.first_index, save_progress, resume)
                writers[tag.unit.index] = writer
            return writer

        batches = _tagged_batches(context, units, done, partial, tags)
        try:
            for result in engines.get("local")(config, context, batches):
                check_stop()
                while not tags[0].batch:  # units without records (left), before this batch's
                    tag = tags.popleft()
                    yield writer_for(tag).finish(tag.formats.format)
                    del writers[tag.unit.index]
                tag = tags.popleft()
                writer = writer_for(tag)
                before = writer.tokens
                writer.add(result)
                if progress is not None:
                    progress(len(result.outcomes), writer.tokens - before)
                if tag.last:
                    yield writers.pop(tag.unit.index).finish(tag.formats.format)
            while tags:
                tag = tags.popleft()
                yield writer_for(tag).finish(tag.formats.format)
                del writers[tag.unit.index]
        finally:
            for writer in writers.values():
                writer.abandon()


def _numbered_lines(units: list[Unit]) -> list[Unit]:
    """The units with each byte range's first line (from the newlines of the ranges before it in its file)."""
    if all(unit.first_line is not None for unit in units):
        return units
    return number_lines(units, [line_counts(unit) for unit in units])


def _tagged_batches(
    context: JobContext,
    units: list[Unit],
    done: dict[int, UnitSummary],
    partial: dict[str, Any],
    tags: deque[_Tag],
) -> Iterator[list[Any]]:
    """The batches of every unit not done, in unit order, each with its `_Tag` appended to `tags` as it is
    handed out (results come back in the same order). Of the unit in progress at the last checkpoint
    (`partial`), the records it had written are read but not given again."""
    config = context.config
    index = 0
    known: dict[str, str | None] = {}  # per file, its format as of the end of its last unit
    for unit in units:
        file = str(unit.path)
        if unit.kind == "file" or unit.start == 0:
            known[file] = None
        if unit.index in done:
            summary = done[unit.index]
            index = summary.first_index + summary.records
            known[str(unit.files[-1])] = summary.format
            continue
        formats = FormatTracker(known[file], config.format, context.format_options, file)
        records = _Counted(tagged_records(unit, index, formats, context))
        skip = partial["records"] if partial.get("unit") == unit.index else 0
        pending = None
        for batch in batched(itertools.islice(records, skip, None), config.batch_size):
            if pending is not None:
                tags.append(_Tag(unit, index, formats, last=False))
                yield pending
            pending = batch
        tags.append(_Tag(unit, index, formats, last=True, batch=pending is not None))
        if pending is not None:
            yield pending
        index += records.count
        known[str(unit.files[-1])] = formats.format


class _Counted:
    """An iterator that counts what it gives."""

    def __init__(self, items: Iterator[Any]):
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.count += 1
            yield item


def _engine(config: PrepareConfig) -> Any:
    if config.engine == "ray":
        from ..engines.ray_units import RayUnits

        return RayUnits(config)
    return LocalUnits()
