"""`--pack` on Ray: the driver plans the packing from document sizes alone; Ray tasks read and write the data.

The record-stream job (`jobs.prepare`) packs as the records stream through one process. On a cluster that would
put every token through the driver, so a Ray job with `--pack` (and no dedup, `datasets:` or `eval:`) runs in
steps, each of them resumed by rerunning the same command:

1. **rows**: the documents are written as rows, unit by unit, by Ray tasks (`jobs.units`), into `OUT/_pack/`:
   a unit job of its own (this config without `--pack`), whose checkpoint and manifest prove its files. A rerun
   that finds it finished (its manifest's digest and every file's sha256, checked in tasks) goes on to step 2.
2. **sizes**: a task per rows shard reads its documents' positions, counted targets, source lengths and record
   indices (`pack_shards.read_sizes`); the driver joins them, in input order.
3. **plan**: on the driver, from those integers: windows, best-fit decreasing, shard cuts (`pack_plan`), by the
   same rules `combine.Packer` and `write.ShardWriter` apply, so the shards are the local engine's bytes.
4. **scatter**: a task per rows shard writes `_pack/pack-<shard>`: its documents grouped by the packed shard that
   takes them, one record batch each (`pack_shards.scatter`). With a dataset-wide window (`--pack-window 0`)
   every packed shard can take documents from every rows shard; this is the shuffle that makes each packed shard
   read one batch per rows shard instead of every rows shard whole.
5. **gather**: a task per packed shard reads its batches and writes `shard-NNNNN.arrow` into OUT
   (`pack_shards.gather`).
6. The driver joins `_rejects.jsonl` (the rows pass's), writes the manifest, and deletes `OUT/_pack/`.

What passes through the driver: integers per document (the sizes, about 32 bytes each with the plan, and each
task's share of the plan), never a token. The checkpoint in OUT (a local folder, or the bucket) lists the
finished scatter files and packed shards; `jobs.outdir` and `jobs.remote.inventory` prove a planned pack's files
(the packed shards by the plan's count, the scatter files by their rows shards' names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..pipeline.accounting import Accounting
from ..pipeline.batch import JobContext
from ..pipeline.config import PrepareConfig
from ..pipeline.faults import crash_point
from ..pipeline.inputs import InputPlan
from ..pipeline.pack_plan import PackPlan, Sizes, plan_packing
from ..pipeline.pack_shards import batch_targets, gather, read_sizes, scatter
from ..pipeline.write import shard_name
from ..schemas.shards import MANIFEST_NAME, REJECTS_NAME
from .checkpoint import Checkpoint
from .manifest import build_manifest, digest_of, fingerprints
from .outdir import PACK_SCRATCH, SCATTER_PREFIX, claim, manifest_digest, open_output
from .remote import BucketUnits, RemoteOut
from .signals import check_stop
from .units import LocalTarget, Progress, run_unit_job


def is_planned_pack_job(config: PrepareConfig, plan: InputPlan, part: str) -> bool:
    """Whether this part of the job packs on Ray by a plan (see the module docstring)."""
    return (
        config.engine == "ray"
        and config.pack is not None
        and part == "train"
        and not plan.has_eval
        and config.dedup is None
        and plan.single_stream(part) is not None
    )


def run_planned_pack(
    config: PrepareConfig, plan: InputPlan, progress: Progress | None, remote: RemoteOut | None
) -> dict[str, Any]:
    """Run (or resume) the job by the steps of the module docstring; returns its manifest."""
    from ..engines.ray_units import RayUnits

    started = time.perf_counter()
    context = JobContext.from_config(config)
    out = Path(config.out)  # the output folder, or an object store's staging folder (which then holds the lock)
    where = remote.url if remote is not None else str(out)
    rows_at = storage.join(where, PACK_SCRATCH) if remote is not None else str(out / PACK_SCRATCH)
    with RayUnits(config) as engine:
        prints = fingerprints(config, context, plan.paths, engine.hashes)
        digest = digest_of(config, prints)
        if remote is not None:
            remote.claim("train", digest, engine.verify)
        checkpoint = claim(out, digest, resume=config.resume, overwrite=config.overwrite)
        target: LocalTarget | BucketUnits = LocalTarget(out)
        if remote is not None:
            target = BucketUnits(remote.url)
            checkpoint = target.load(digest, engine.verify) if config.resume else None
        if checkpoint is None:
            checkpoint = Checkpoint(digest, rejects_sha256=hashlib.sha256().hexdigest())
            target.save(checkpoint, first=True)  # before anything else: what this run writes is provably its own
        rows = _rows_pass(config, plan, progress, prints, engine, remote)
        rows_files = [_at(rows_at, s["file"]) for s in rows["shards"]]
        scatter_files = [_at(rows_at, SCATTER_PREFIX + s["file"]) for s in rows["shards"]]
        bounds = np.concatenate([[0], np.cumsum([s["rows"] for s in rows["shards"]], dtype=np.int64)])
        sizes = [Sizes.of([], [], [], [])] * len(rows_files)
        for index, found in engine.map(read_sizes, [(file,) for file in rows_files]):
            sizes[index] = found
        pack = plan_packing(
            Sizes.join(sizes), config.pack, config.pack_window, config.shard_max_rows, config.shard_max_bytes
        )
        if checkpoint.packed_total != pack.num_shards:
            checkpoint.packed_total = pack.num_shards
            target.save(checkpoint)
        _scatter(engine, checkpoint, target, pack, bounds, rows_files, scatter_files)
        shards = _gather(engine, checkpoint, target, pack, bounds, scatter_files, where)
        check_stop()
        accounting = Accounting.from_dict(rows["records"])
        rejects_file = target.join_rejects([f"{PACK_SCRATCH}/{REJECTS_NAME}"], checkpoint)
        packing = pack.summary(config.pack, config.pack_window)
        manifest = build_manifest(config, context, prints, accounting, shards, packing)
        manifest["rejects"] = rejects_file
        manifest["encoder"] = rows["encoder"]
        manifest["datasets"] = plan.manifest_datasets("train", [accounting.to_dict()], prints)
        target.write_manifest(manifest)
        _remove_rows(rows_at, rows, scatter_files)
        target.finish([], checkpoint)
    manifest["_elapsed_seconds"] = time.perf_counter() - started
    if remote is not None:
        manifest["_published_to"] = remote.url  # written by the tasks: nothing for `RemoteOut.publish` to upload
    return manifest


def _rows_pass(
    config: PrepareConfig,
    plan: InputPlan,
    progress: Progress | None,
    prints: dict[str, Any],
    engine: Any,
    remote: RemoteOut | None,
) -> dict[str, Any]:
    """Step 1: the rows pass's manifest, from its finished output when a run before this one wrote it."""
    rows_remote = None
    if remote is not None:
        rows_remote = RemoteOut(storage.join(remote.url, PACK_SCRATCH), config.overwrite)
        rows_config = dataclasses.replace(config, pack=None, out=str(rows_remote.staging))
        rows_at = rows_remote.url
    else:
        rows_config = dataclasses.replace(config, pack=None, out=str(Path(config.out) / PACK_SCRATCH))
        rows_at = rows_config.out
    if config.resume and (finished := _finished(rows_at, digest_of(rows_config, prints), engine)) is not None:
        return finished
    lock = open_output(Path(rows_config.out))
    try:
        return run_unit_job(rows_config, plan, progress, rows_remote, prints)
    finally:
        lock.release()
        if rows_remote is not None:  # its staging folder held only the lock: the tasks wrote to the bucket
            shutil.rmtree(rows_remote.staging, ignore_errors=True)


def _finished(rows_at: str, digest: str, engine: Any) -> dict[str, Any] | None:
    """The rows pass's manifest when it is this job's and every file it lists is intact (checked in tasks)."""
    try:
        manifest = json.loads(_read(_at(rows_at, MANIFEST_NAME)))
        if manifest_digest(manifest) != digest:
            return None
        listed = [(s["file"], s["sha256"]) for s in manifest["shards"]]
        listed.append((manifest["rejects"]["file"], manifest["rejects"]["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    intact = engine.verify([(_at(rows_at, name), sha256) for name, sha256 in listed])
    return manifest if all(intact) else None


def _scatter(
    engine: Any,
    checkpoint: Checkpoint,
    target: LocalTarget | BucketUnits,
    pack: PackPlan,
    bounds: np.ndarray,
    rows_files: list[str],
    scatter_files: list[str],
) -> None:
    """Step 4: every scatter file not already written (a resumed run's are checked in tasks)."""
    listed = [f for f in scatter_files if _name(f) in checkpoint.scattered]
    intact = engine.verify([(f, checkpoint.scattered[_name(f)]) for f in listed])
    checkpoint.scattered = {
        _name(f): checkpoint.scattered[_name(f)] for f, ok in zip(listed, intact, strict=True) if ok
    }
    todo = [i for i, f in enumerate(scatter_files) if _name(f) not in checkpoint.scattered]
    calls = [(rows_files[i], pack.doc_shard[bounds[i] : bounds[i + 1]], scatter_files[i]) for i in todo]
    saved = time.monotonic()
    for index, sha256 in engine.map(scatter, calls):
        check_stop()
        checkpoint.scattered[_name(scatter_files[todo[index]])] = sha256
        if time.monotonic() - saved >= engine.checkpoint_seconds:
            target.save(checkpoint)
            saved = time.monotonic()
    target.save(checkpoint)


def _gather(
    engine: Any,
    checkpoint: Checkpoint,
    target: LocalTarget | BucketUnits,
    pack: PackPlan,
    bounds: np.ndarray,
    scatter_files: list[str],
    where: str,
) -> list[Any]:
    """Step 5: every packed shard not already written; returns all of them, in order."""
    parts: list[list[tuple[str, int]]] = [[] for _ in range(pack.num_shards)]
    for i, file in enumerate(scatter_files):
        for batch, shard in enumerate(batch_targets(pack.doc_shard[bounds[i] : bounds[i + 1]]).tolist()):
            parts[shard].append((file, batch))
    done = {s.file for s in checkpoint.shards}
    todo = [s for s in range(pack.num_shards) if shard_name(s) not in done]
    calls = []
    for shard in todo:
        documents = pack.shard_documents(shard)  # in segment order; the batches hold them in input order
        positions = np.searchsorted(np.sort(documents), documents)
        calls.append((parts[shard], positions, pack.shard_row_lengths(shard), _at(where, shard_name(shard))))
    saved = time.monotonic()
    for _, info in engine.map(gather, calls):
        check_stop()
        checkpoint.shards.append(info)
        if time.monotonic() - saved >= engine.checkpoint_seconds:
            target.save(checkpoint)
            crash_point("packed-shard-checkpointed")
            saved = time.monotonic()
    target.save(checkpoint)
    return sorted(checkpoint.shards, key=lambda s: s.file)


def _remove_rows(rows_at: str, rows: dict[str, Any], scatter_files: list[str]) -> None:
    """Delete the rows pass's files (each listed by its manifest, or a scatter file named after one), its manifest
    last, then its folder when nothing else is in it."""
    names = [_name(f) for f in scatter_files] + [s["file"] for s in rows["shards"]]
    names += [rows["rejects"]["file"], MANIFEST_NAME]
    if storage.is_url(rows_at):
        present = storage.listing(rows_at)
        for name in names:
            if name in present:
                storage.delete(_at(rows_at, name))
        return
    folder = Path(rows_at)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else is in it (never ours to delete)
        folder.rmdir()


def _at(folder: str, name: str) -> str:
    return storage.join(folder, name) if storage.is_url(folder) else str(Path(folder) / name)


def _name(file: str) -> str:
    return file.rstrip("/").rsplit("/", 1)[-1]


def _read(where: str) -> bytes:
    return storage.read_bytes(where) if storage.is_url(where) else Path(where).read_bytes()
