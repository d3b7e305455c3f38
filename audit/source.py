"""What the audit reads: a shards folder written by `prepare`, or raw inputs run through the same stages.

Either way the result is one `AuditSource`: the rows (a polars LazyFrame in `SHARD_SCHEMA`, plus a way to
stream them as Arrow batches for the token scans), the record accounting with example rejects, and the
tokenizer and chat template when they can be loaded. The sample mode calls `process_batch`, the very function
`prepare` runs, on the first N records and keeps the rows in memory: nothing is written.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import polars as pl
import pyarrow as pa

from .. import storage
from ..errors import SetupError
from ..loader import ShardSet
from ..loader.shards import Location, file_size, holds_shards, location
from ..pipeline.accounting import Accounting
from ..pipeline.batch import JobContext, load_job_template, process_batch
from ..pipeline.config import PrepareConfig
from ..pipeline.inputs import InputPlan, batched
from ..pipeline.packed import unpack_batch
from ..pipeline.shift import rows_to_batch
from ..pipeline.templates import ChatTemplate
from ..pipeline.tokenizer import TokenizerInfo, load_tokenizer
from ..schemas.shards import MANIFEST_NAME, REJECTS_NAME, SHARD_SCHEMA
from ..storage import RemoteFile

REJECT_EXAMPLES = 5  # example records kept per (status, reason)


@dataclass
class AuditSource:
    kind: str  # "shards" or "sample"
    label: str  # what was audited, as the user named it
    frame: pl.LazyFrame  # the rows, SHARD_SCHEMA columns, in order (row index = position in this frame)
    # The same rows streamed as Arrow batches (optionally only some columns), for scans polars cannot express.
    batches: Callable[[list[str] | None], Iterator[pa.RecordBatch]]
    records: dict[str, Any] | None  # read/written/rejected/dropped/by_reason/rows_dropped, when known
    rejects: list[dict[str, Any]] = field(default_factory=list)  # examples: source, status, reason, detail
    tokenizer: TokenizerInfo | None = None
    template: ChatTemplate | None = None
    template_profile: dict[str, Any] | None = None  # the manifest's "template" section (end_of_turn_markers...)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why


def is_shards_folder(target: str) -> bool:
    """A folder `prepare` wrote (or shards alone), local or `s3://`; anything else is a raw input."""
    return holds_shards(target)


# shards written by `prepare`


def open_shards(folder: str, tokenizer_path: str | None = None) -> AuditSource:
    """A shards folder: rows from `shard-*.arrow`, accounting from `_manifest.json`, examples from `_rejects.jsonl`.

    The shards are read through the loader's `ShardSet`, checked as every reader checks them (schema version,
    layout, columns and types, row counts) and their sha256 verified: the audit reads every byte anyway, and a
    verdict on bytes other than the ones `prepare` wrote would vouch for nothing.
    """
    path = location(folder)
    notes: list[str] = []
    if file_size(path / MANIFEST_NAME) is not None:
        shards = ShardSet(path, verify=True)
        manifest = shards.manifest
    else:
        shards = ShardSet.unlisted(path)
        manifest = {}
        notes.append(f"{folder} has no {MANIFEST_NAME}: record accounting, rejects and the template are unknown")
    shards.check()
    if shards.packed or isinstance(path, RemoteFile):
        # Held in memory: packed rows are audited as the documents they hold (unpacking only re-cuts the list
        # offsets); rows of objects come through the ShardSet (ranged GETs, the bytes verified), since polars
        # scans only local files here (docs/scale.md). Local rows are scanned lazily from the files instead.
        unpack = unpack_batch if shards.packed else lambda batch: batch
        table = pa.Table.from_batches([unpack(batch) for _, batch in shards.iter_batches()], schema=SHARD_SCHEMA)
        frame = pl.from_arrow(table).lazy()  # type: ignore[union-attr]
        if shards.packed:
            notes.append(f"{folder} holds packed shards: audited as the documents they hold, one per row")

        def stream(columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
            return iter(table.to_batches() if columns is None else table.select(columns).to_batches())

    else:
        paths = [str(shard.path) for shard in shards.files]
        frame = pl.scan_ipc(paths) if paths else empty_frame()

        def stream(columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
            return (batch for _, batch in shards.iter_batches(columns))

    config = manifest.get("config", {})
    tokenizer = _shards_tokenizer(tokenizer_path, config.get("tokenizer"), notes)
    template = _shards_template(manifest, tokenizer, notes) if tokenizer is not None else None
    records = manifest.get("records")
    return AuditSource(
        kind="shards",
        label=folder,
        frame=frame,
        batches=stream,
        records=records,
        rejects=read_reject_examples(path / REJECTS_NAME),
        tokenizer=tokenizer,
        template=template,
        template_profile=manifest.get("template"),
        config=config,
        notes=notes,
    )


def _shards_tokenizer(override: str | None, recorded: str | None, notes: list[str]) -> TokenizerInfo | None:
    """The tokenizer named on the command line (must load), else the one in the manifest (may have moved)."""
    if override:
        return load_tokenizer(override)
    if not recorded:
        notes.append("no tokenizer recorded: tokens are shown as ids; pass --tokenizer to see their text")
        return None
    try:
        return load_tokenizer(recorded)
    except SetupError as exc:
        notes.append(f"the tokenizer recorded in the manifest could not be loaded ({exc}); pass --tokenizer")
        return None


def _shards_template(manifest: dict[str, Any], tokenizer: TokenizerInfo, notes: list[str]) -> ChatTemplate | None:
    """The chat template the shards were made with, only if it is byte-identical to the one recorded."""
    recorded = (manifest.get("fingerprints") or {}).get("template")
    if not recorded:
        return None
    known = {f.name for f in fields(PrepareConfig)}
    values = {k: v for k, v in manifest.get("config", {}).items() if k in known}
    try:
        config = PrepareConfig.from_mapping(values)
        template = load_job_template(config, tokenizer)
    except SetupError as exc:
        notes.append(f"the chat template could not be loaded ({exc}); template checks skipped")
        return None
    if template is None or template.sha256 != recorded.get("sha256"):
        notes.append(f"the chat template {recorded.get('name')} changed since prepare; template checks skipped")
        return None
    return template


def read_reject_examples(path: Location, per_reason: int = REJECT_EXAMPLES) -> list[dict[str, Any]]:
    """The first few records not written, per (status, reason), in file order. Counts come from the manifest.
    An object's bytes are read whole (rejects are lines of metadata, small beside the shards) and parsed as the
    local file is, so both give the same examples."""
    if not file_size(path):
        return []
    source = io.BytesIO(storage.read_bytes(path.url)) if isinstance(path, RemoteFile) else path
    schema = {"source": pl.String, "status": pl.String, "reason": pl.String, "detail": pl.String}
    frame = (
        pl.scan_ndjson(source, schema=schema)
        .filter(pl.int_range(pl.len()).over("status", "reason") < per_reason)
        .collect()
    )
    return frame.to_dicts()


def empty_frame() -> pl.LazyFrame:
    return pl.from_arrow(SHARD_SCHEMA.empty_table()).lazy()  # type: ignore[union-attr]


# raw inputs, run through the pipeline on a sample


def run_sample(config: PrepareConfig, sample: int) -> AuditSource:
    """The first `sample` records of the inputs through `process_batch`, exactly as `prepare` runs them."""
    if not config.inputs and not config.datasets:
        raise SetupError("no input given: pass a shards folder, or INPUT files with --tokenizer")
    plan = InputPlan.build(config)  # first: a mistyped path is the likelier mistake
    if not config.tokenizer:
        raise SetupError("auditing raw inputs needs --tokenizer PATH (a tokenizer.json or a model folder)")
    if sample < 1:
        raise SetupError("--sample must be at least 1")
    if config.preference:
        raise SetupError(
            f"--format {config.format}: the audit of raw inputs shows SFT rows; prepare the preference data, then "
            "audit its shards folder (pairs side by side)"
        )
    context = JobContext.from_config(config)
    accounting = Accounting()
    rows = []
    rejects: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    records = itertools.islice(plan.records("train"), sample)  # with `datasets:`, the job's mixture
    for batch in batched(records, config.batch_size):
        result = process_batch(batch, context)
        for outcome in result.outcomes:
            accounting.add(outcome)
            if outcome.status == "written":
                continue
            key = (outcome.status, outcome.reason or "")
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= REJECT_EXAMPLES:
                reject = {"source": str(outcome.source), "status": outcome.status, "reason": outcome.reason}
                rejects.append({**reject, "detail": outcome.detail})
        for row in result.rows:
            accounting.add_row_flags(row.flags)
        rows.extend(result.rows)
    table = pa.Table.from_batches(
        [rows_to_batch(rows[i : i + 1024]) for i in range(0, len(rows), 1024)], schema=SHARD_SCHEMA
    )
    profile = context.renderer.profile
    template = context.template
    notes = []
    if accounting.read == sample:
        notes.append(f"sample: the first {sample} records of the inputs (--sample N to change)")
    return AuditSource(
        kind="sample",
        label=" ".join(config.inputs or [d["name"] for d in config.datasets]),
        frame=pl.from_arrow(table).lazy(),  # type: ignore[union-attr]
        batches=lambda columns=None: iter(
            table.to_batches() if columns is None else table.select(columns).to_batches()
        ),
        records=accounting.to_dict(),
        rejects=rejects,
        tokenizer=context.tokenizer,
        template=template,
        template_profile=None
        if template is None or profile is None
        else {"name": template.name, "end_of_turn_markers": list(profile.eot_markers)},
        config=config.to_dict(),
        notes=notes,
    )
