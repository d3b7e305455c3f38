"""The `prepare` job: inputs -> shards + manifest + rejects, with every record accounted for.

`process_batch` is the whole per-record pipeline (parse -> render -> tokenize -> mask -> fit -> shift) as one
plain function of a batch of raw records and a `JobContext`; engines only decide where it runs. `prepare`
reads, runs batches in input order, writes shards, and writes the manifest last.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..schemas.records import RawRecord, Record
from ..schemas.shards import (
    COLUMN_DOCS,
    LAYOUT_ROWS,
    MANIFEST_NAME,
    REJECTS_NAME,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    SHARD_SUFFIX,
)
from .accounting import Accounting, Outcome
from .config import PrepareConfig
from .errors import RecordError, SetupError
from .fit import LengthPolicy, fit
from .formats import detect, parse
from .formats.options import FormatOptions
from .read import expand_inputs, iter_file
from .render import Renderer
from .shift import Row, shift
from .templates import ChatTemplate, resolve_template_source
from .tokenize import TokenizerInfo, load_tokenizer, tokenize_batch
from .write import TEMP_PREFIX, TEMP_SUFFIX, ShardWriter, file_sha256, temp_path


@dataclass
class JobContext:
    """Everything a worker needs to process records, built once per process from the config."""

    config: PrepareConfig
    tokenizer: TokenizerInfo
    template: ChatTemplate | None
    renderer: Renderer
    format_options: FormatOptions
    length_policy: LengthPolicy

    @classmethod
    def from_config(cls, config: PrepareConfig) -> JobContext:
        tokenizer = load_tokenizer(config.tokenizer)
        template = load_job_template(config, tokenizer)
        return cls(
            config=config,
            tokenizer=tokenizer,
            template=template,
            renderer=Renderer(template, tokenizer, config.render_options()),
            format_options=config.format_options(),
            length_policy=config.length_policy(),
        )


def load_job_template(config: PrepareConfig, tokenizer: TokenizerInfo) -> ChatTemplate | None:
    """The chat template, or None when the tokenizer has none and no record needs one (plain text)."""
    if config.chat_template is None and tokenizer.chat_template is None:
        return None
    name, source = resolve_template_source(config.chat_template, tokenizer.chat_template, config.tokenizer)
    tokenizer.set_template(source)
    variables = {**tokenizer.special_tokens, **config.template_kwargs}
    return ChatTemplate(name=name, source=source, variables=variables, template_date=config.template_date)


@dataclass
class BatchResult:
    rows: list[Row] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


def process_batch(raw_records: list[RawRecord], context: JobContext) -> BatchResult:
    """parse -> render -> tokenize -> fit -> shift for a batch, in order; one Outcome per input record."""
    records: list[tuple[RawRecord, Record | RecordError]] = []
    for raw in raw_records:
        if raw.error is not None:
            records.append((raw, RecordError(raw.error, raw.detail)))
            continue
        try:
            records.append((raw, parse(raw.value, raw.source, raw.extra.get("format"), context.format_options)))
        except RecordError as exc:
            records.append((raw, exc))

    rendered: list[list[Any] | RecordError] = []
    for _, record in records:
        if isinstance(record, RecordError):
            rendered.append(record)
            continue
        try:
            rendered.append(context.renderer.render(record))
        except RecordError as exc:
            rendered.append(exc)

    flat = [example for item in rendered if not isinstance(item, RecordError) for example in item]
    tokenized = iter(tokenize_batch(context.tokenizer, flat))

    result = BatchResult()
    for (raw, _), item in zip(records, rendered, strict=True):
        if isinstance(item, RecordError):
            result.outcomes.append(Outcome.failed(raw.source, item))
            continue
        rows: list[Row] = []
        failure: RecordError | None = None
        drops: list[RecordError] = []
        for example in [next(tokenized) for _ in item]:
            if failure is not None:
                continue
            if isinstance(example, RecordError):
                failure = example
                continue
            try:
                rows.append(shift(fit(example, context.length_policy)))
            except RecordError as exc:
                if exc.reason in ("too_long", "no_trainable_tokens"):
                    drops.append(exc)
                else:
                    failure = exc
        if failure is not None:
            result.outcomes.append(Outcome.failed(raw.source, failure))
        elif not rows:
            result.outcomes.append(Outcome.failed(raw.source, drops[0]))
        else:
            outcome = Outcome(raw.source, "written", rows=len(rows))
            outcome.detail = ",".join(d.reason for d in drops)
            result.outcomes.append(outcome)
            result.rows.extend(rows)
    return result


def iter_raw_records(paths: list[Path], forced_format: str | None, options: FormatOptions) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each tagged with its file's format (detected from its first record)."""
    index = 0
    for path in paths:
        file_format = forced_format
        for raw in iter_file(path, str(path), index):
            index += 1
            if file_format is None and raw.error is None:
                file_format = detect(raw.value, options)
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
    with open(out / REJECTS_NAME, "w", encoding="utf-8") as rejects:
        for batch in batched(records, config.batch_size):
            result = process_batch(batch, context)
            for outcome in result.outcomes:
                accounting.add(outcome, rejects)
                if outcome.status == "written" and outcome.detail:
                    accounting.rows_dropped.update(outcome.detail.split(","))
            for row in result.rows:
                accounting.add_row_flags(row.flags)
            writer.add(result.rows)
            if progress is not None:
                progress(len(batch), sum(r.num_tokens for r in result.rows))
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
