"""The `prepare` job: inputs -> shards + manifest + rejects, with every record accounted for.

Reads records in order, hands batches to an engine (which runs `batch.process_batch` wherever it likes),
writes the rows into shards in input order, and writes the manifest last.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..engines import local
from ..schemas.records import RawRecord
from ..schemas.shards import (
    COLUMN_DOCS,
    LAYOUT_ROWS,
    MANIFEST_NAME,
    REJECTS_NAME,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    SHARD_SUFFIX,
)
from .accounting import Accounting
from .batch import JobContext
from .config import PrepareConfig
from .errors import SetupError
from .formats import detect
from .formats.options import FormatOptions
from .read import decode, expand_inputs, iter_file
from .write import TEMP_PREFIX, TEMP_SUFFIX, ShardWriter, file_sha256, temp_path


def iter_raw_records(paths: list[Path], forced_format: str | None, options: FormatOptions) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each tagged with its file's format (detected from its first record)."""
    index = 0
    for path in paths:
        file_format = forced_format
        for raw in iter_file(path, str(path), index):
            index += 1
            if file_format is None and raw.error is None:
                probe = decode(RawRecord(raw.source, value=raw.value, line=raw.line))
                file_format = None if probe.error else detect(probe.value, options)
            raw.extra["format"] = file_format
            yield raw


def batched(items: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def clear_previous_output(out: Path) -> None:
    """Remove what an earlier run wrote here (shards, temporaries, manifest, rejects); leave anything else."""
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        name = path.name.removesuffix(TEMP_SUFFIX)
        if name != path.name:
            name = name.removeprefix(TEMP_PREFIX)
        ours = name in (MANIFEST_NAME, REJECTS_NAME) or (name.startswith("shard-") and name.endswith(SHARD_SUFFIX))
        if ours:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def prepare(config: PrepareConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the job. Returns the manifest (also written to OUT/manifest.json)."""
    config.require_paths()
    config.validate()
    started = time.perf_counter()
    paths = expand_inputs(config.inputs)
    context = JobContext.from_config(config)
    out = Path(config.out)
    clear_previous_output(out)
    accounting = Accounting()
    writer = ShardWriter(out, max_rows=config.shard_max_rows, max_bytes=config.shard_max_bytes)
    records = iter_raw_records(paths, config.format, context.format_options)
    workers = config.workers or local.available_cores()
    with open(out / REJECTS_NAME, "w", encoding="utf-8") as rejects:
        for result in local.run(config, context, batched(records, config.batch_size), workers):
            for outcome in result.outcomes:
                accounting.add(outcome, rejects)
                if outcome.status == "written" and outcome.detail:
                    accounting.rows_dropped.update(outcome.detail.split(","))
            for row in result.rows:
                accounting.add_row_flags(row.flags)
            writer.add(result.rows)
            if progress is not None:
                progress(len(result.outcomes), sum(r.num_tokens for r in result.rows))
    shards = writer.close()
    accounting.check()
    manifest = build_manifest(config, context, paths, accounting, shards)
    write_json(out / MANIFEST_NAME, manifest)
    manifest["_elapsed_seconds"] = time.perf_counter() - started  # for the caller; not written
    return manifest


def build_manifest(
    config: PrepareConfig, context: JobContext, paths: list[Path], accounting: Accounting, shards: list[Any]
) -> dict[str, Any]:
    template = context.template
    profile = context.renderer.profile
    return {
        "lossmask_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "layout": LAYOUT_ROWS,
        "schema": {f.name: {"type": str(f.type), "doc": COLUMN_DOCS[f.name]} for f in SHARD_SCHEMA},
        "config": config.to_dict(),
        "fingerprints": {
            "inputs": [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths],
            "tokenizer": {"path": config.tokenizer, "sha256": context.tokenizer.fingerprint},
            "template": None if template is None else {"name": template.name, "sha256": template.sha256},
        },
        "template": None
        if template is None or profile is None
        else {
            "name": template.name,
            "content_format": profile.content_format,
            "renders_reasoning": profile.renders_reasoning,
            "end_of_turn_markers": list(profile.eot_markers),
            "has_generation_tags": template.has_generation_tags,
        },
        "tokenizer": {
            "vocab_size": context.tokenizer.vocab_size,
            "special_tokens": context.tokenizer.special_tokens,
            "control_tokens": len(context.tokenizer.control_tokens),
            "escape_supported": context.tokenizer.escape_checked,
        },
        "shards": [s.to_dict() for s in shards],
        "totals": {
            "rows": sum(s.rows for s in shards),
            "tokens": sum(s.tokens for s in shards),
            "loss_tokens": sum(s.loss_tokens for s in shards),
        },
        "records": accounting.to_dict(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    temp = temp_path(path)
    temp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    temp.replace(path)
