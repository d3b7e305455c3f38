"""The `prepare` job: inputs -> shards + manifest + rejects, with every record accounted for.

A job that writes each record's rows as they are is written work unit by work unit (`jobs.units`). The others
(packing, concatenation, dedup, several datasets, an eval split) run here on the record stream: this module
reads records in order, hands batches to an engine (which runs `batch.process_batch` wherever it likes), passes
each record's rows through a combiner (`combine`: as they are, packed, or concatenated), writes what comes out
into shards in order, and writes the manifest last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import engines, storage
from ..files import write_json
from ..pipeline.accounting import Accounting, Outcome
from ..pipeline.batch import JobContext
from ..pipeline.combine import (
    Combiner,
    Concatenator,
    ConcatenatorResume,
    Output,
    Packer,
    PackerResume,
    Passthrough,
    PassthroughResume,
)
from ..pipeline.config import PrepareConfig
from ..pipeline.dedup import Deduplicator
from ..pipeline.encoders import EncoderMismatch
from ..pipeline.inputs import InputPlan, batched, job_format, resolve_inputs
from ..pipeline.write import RecordRows, ShardWriter, record_ranges
from ..schemas.arrays import values
from ..schemas.layouts import LAYOUTS
from ..schemas.shards import LAYOUT_PACKED, MANIFEST_NAME, REJECTS_NAME
from .checkpoint import CHECKPOINT_NAME, Checkpoint
from .manifest import build_manifest, digest_of, fingerprints, input_size
from .outdir import claim, open_output, output_error
from .planned_pack import is_planned_pack_job, run_planned_pack
from .remote import BucketUnits, RemoteOut
from .signals import check_stop
from .units import is_unit_job, run_unit_job

# Below this much input, `--encoder auto` keeps `tokenizers`: building and proving tiktoken's encoder costs more
# than it saves. The choice never changes the output (the encoders give the same ids).
FAST_ENCODER_MIN_BYTES = 4 << 20


def prepare(config: PrepareConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the job; resume a killed run of the same job from its checkpoint. Returns the manifest.

    With the tiktoken encoder, a sampled row on which it disagrees with `tokenizers` stops the run, and the job
    starts over with `tokenizers` (the manifest says why)."""
    config.require_paths()
    if config.format is None and not config.datasets:
        paths = resolve_inputs(config.inputs)
        if (fmt := job_format(paths, None, config.format_options())) is not None:
            config = dataclasses.replace(config, format=fmt)  # a preference job: its layout is the format's
    plan = InputPlan.build(config)
    if config.encoder == "auto":
        large = sum(input_size(p) for p in plan.paths) >= FAST_ENCODER_MIN_BYTES
        config = dataclasses.replace(config, encoder="tiktoken-if-proven" if large else "tokenizers")
    remote = RemoteOut(config.out, config.overwrite) if storage.is_url(config.out) else None
    if remote is not None:  # the job runs into a local staging folder, then publishes it (jobs/remote.py)
        remote.check()
        config = dataclasses.replace(config, out=str(remote.staging))
    out = Path(config.out)
    lock = open_output(out)
    try:
        try:
            manifest = _run_parts(config, plan, progress, remote)
        except EncoderMismatch as exc:
            if config.encoder == "tokenizers":
                raise
            print(f"lossmask: {exc}; starting over with --encoder tokenizers", file=sys.stderr)
            manifest = _run_parts(
                dataclasses.replace(config, encoder="tokenizers", resume=False), plan, progress, remote
            )
            manifest["encoder"]["fell_back"] = str(exc)
            if "_published_to" in manifest:  # written to the bucket by Ray tasks (`jobs.units`)
                BucketUnits(manifest["_published_to"]).write_manifest(manifest)
            else:
                write_json(out / MANIFEST_NAME, {k: v for k, v in manifest.items() if not k.startswith("_")})
        if remote is not None:
            remote.publish()
        return manifest
    except OSError as exc:
        error = output_error(exc, out)
        if error is None:
            raise
        raise error from None
    finally:
        lock.release()
        if remote is not None:
            remote.tidy()


def _run_parts(
    config: PrepareConfig,
    plan: InputPlan,
    progress: Callable[[int, int], None] | None,
    remote: RemoteOut | None = None,
) -> dict[str, Any]:
    """The eval part first (OUT/eval/, its own manifest), then the train part; with dedup, one set of digests
    for both, so that no train record repeats an eval record."""
    dedup = Deduplicator() if config.dedup is not None else None
    evaluation = None
    if plan.has_eval:
        eval_config = plan.eval_config(config)
        lock = open_output(Path(eval_config.out))  # OUT/eval is claimed as any --out is (jobs/outdir.py)
        try:
            evaluation = _run(eval_config, plan, progress, "eval", dedup, remote)
        finally:
            lock.release()
    if is_unit_job(config, plan, "train"):
        manifest = run_unit_job(config, plan, progress, remote)
    elif is_planned_pack_job(config, plan, "train"):
        manifest = run_planned_pack(config, plan, progress, remote)
    else:
        manifest = _run(config, plan, progress, "train", dedup, remote)
    if evaluation is not None:
        manifest["eval"] = {"out": "eval", "records": evaluation["records"], "totals": evaluation["totals"]}
        write_json(Path(config.out) / MANIFEST_NAME, {k: v for k, v in manifest.items() if not k.startswith("_")})
    return manifest


def _run(
    config: PrepareConfig,
    plan: InputPlan,
    progress: Callable[[int, int], None] | None,
    part: str = "train",
    dedup: Deduplicator | None = None,
    remote: RemoteOut | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    context = JobContext.from_config(config)
    out = Path(config.out)
    prints = fingerprints(config, context, plan.paths)
    datasets = plan.part_datasets(part)  # what records are read is the config's (seed, datasets, eval) and files'
    digest = digest_of(config, prints)
    if remote is not None:  # refused before any work, as a local --out is
        remote.claim(part, digest)
    checkpoint = claim(out, digest, resume=config.resume, overwrite=config.overwrite)
    if checkpoint is None:
        checkpoint = Checkpoint(digest, rejects_sha256=hashlib.sha256().hexdigest())
        checkpoint.write(out)  # before anything else: what this run writes is then provably its own
    accounting = Accounting.from_dict(checkpoint.accounting) if checkpoint.accounting else Accounting()
    packed = config.layout == LAYOUT_PACKED
    writer = ShardWriter(
        out,
        max_rows=config.shard_max_rows,
        max_bytes=config.shard_max_bytes,
        shards=checkpoint.shards,
        packed=packed,
        schema=LAYOUTS[config.layout][0],
    )
    combiner = make_combiner(config, checkpoint.replay, checkpoint.packing)
    counted_from = checkpoint.next_record  # records before it are only replayed: counted by the run that died
    next_record = counted_from
    # Per dataset, its records' accounting (restored from the checkpoint). With dedup, a resumed run reads from
    # the first record again, to see every digest; records before the combiner's replay point are only seen.
    named = plan.named_part(part)
    saved = checkpoint.accounting.get("datasets") or [{}] * len(datasets)
    per_dataset = [Accounting.from_dict(a) if a else Accounting() for a in saved]
    replay_from = combiner.replay_from
    records = plan.records(part, skip=0 if dedup is not None else replay_from)
    run_engine = engines.get(config.engine)
    with open(out / REJECTS_NAME, "a+b") as rejects:
        rejects.truncate(checkpoint.rejects_bytes)
        rejects_hash = hashlib.sha256()
        rejects.seek(0)
        for chunk in iter(lambda: rejects.read(1 << 20), b""):  # the part a resumed run keeps
            rejects_hash.update(chunk)

        def write(outputs: list[Output]) -> None:
            for output in outputs:
                if writer.add_record(output.rows) is not None:
                    rejects.flush()
                    checkpoint.shards = list(writer.shards)
                    checkpoint.next_record = next_record
                    checkpoint.rejects_bytes = rejects.tell()
                    checkpoint.rejects_sha256 = rejects_hash.hexdigest()
                    checkpoint.accounting = {**accounting.to_dict(), "datasets": [a.to_dict() for a in per_dataset]}
                    checkpoint.replay = output.resume.to_dict()
                    checkpoint.packing = output.counts
                    checkpoint.save(out)

        for result in run_engine(config, context, batched(records, config.batch_size)):
            check_stop()
            batch = result.batch
            flags = values(batch.column("flags"))
            ranges = record_ranges(batch, [outcome.rows for outcome in result.outcomes])
            position = 0
            for outcome, record_rows in zip(result.outcomes, ranges, strict=True):
                index = outcome.source.index
                rows_at, position = position, position + outcome.rows
                if dedup is not None and dedup.seen_before(
                    outcome.digest, f"{part}:{outcome.dataset}:{outcome.source}"
                ):
                    outcome, record_rows = duplicate(outcome, record_rows)
                if index < replay_from:
                    continue
                if index >= counted_from:
                    dataset = datasets[outcome.dataset or 0]
                    if outcome.status != "written":
                        line = (outcome.to_reject_line(dataset.name if named else None) + "\n").encode("utf-8")
                        rejects.write(line)
                        rejects_hash.update(line)
                    accounting.add(outcome)
                    per_dataset[outcome.dataset or 0].add(outcome)
                    for row_flags in flags[rows_at : rows_at + outcome.rows]:
                        accounting.add_row_flags(int(row_flags))
                    next_record = index + 1
                write(combiner.add(index, record_rows))
            if progress is not None:
                progress(len(result.outcomes), sum(r.tokens for r in ranges))
        check_stop()  # a stop that came with the last batch still stops the job before its manifest
        write(combiner.finish())
        rejects_file = {"file": REJECTS_NAME, "bytes": rejects.tell(), "sha256": rejects_hash.hexdigest()}
    writer.close()
    accounting.check()
    manifest = build_manifest(config, context, prints, accounting, writer.shards, combiner.summary())
    manifest["rejects"] = rejects_file
    manifest["encoder"] = {"name": context.tokenizer.encoder.name, "note": context.encoder_note}
    manifest["datasets"] = plan.manifest_datasets(part, [a.to_dict() for a in per_dataset], prints)
    write_json(out / MANIFEST_NAME, manifest)
    (out / CHECKPOINT_NAME).unlink(missing_ok=True)
    manifest["_elapsed_seconds"] = time.perf_counter() - started  # for the caller; not written
    return manifest


def duplicate(outcome: Outcome, rows: RecordRows) -> tuple[Outcome, RecordRows]:
    """A record `dedup` drops: counted `dropped: duplicate`, its rows not written."""
    dropped = Outcome(outcome.source, "dropped", 0, "duplicate", "an earlier record has the same messages")
    dropped.dataset = outcome.dataset
    return dropped, dataclasses.replace(rows, count=0, tokens=0, loss_tokens=0, size=0)


def make_combiner(config: PrepareConfig, replay: dict[str, int], counts: dict[str, int]) -> Combiner:
    """The job's combiner, resumed from a checkpoint's `replay` state and packing counts ({} = from the start)."""
    if config.pack is not None:
        return Packer(config.pack, config.pack_window, PackerResume.from_dict(replay), counts)
    if config.concat is not None:
        return Concatenator(config.concat, ConcatenatorResume.from_dict(replay), counts)
    return Passthrough(PassthroughResume.from_dict(replay))
