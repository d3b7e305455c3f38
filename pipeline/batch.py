"""The per-record pipeline as one plain function: parse -> render -> tokenize -> fit -> shift.

`process_batch` takes a batch of raw records and a `JobContext` and returns rows plus one `Outcome` per record.
It knows nothing of files, processes or clusters: the engines (`lossmask.engines`) decide where it runs. It is
also the one place where a preference job turns off to `pairs`, which makes pair and KTO rows from the same
stages, so every engine runs those too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import pyarrow as pa

from ..errors import RecordError, SetupError
from ..schemas.examples import TokenizedExample
from ..schemas.layouts import LAYOUTS
from ..schemas.records import Conversation, RawRecord, Record
from .accounting import Outcome
from .config import PrepareConfig
from .dedup import record_digest
from .encoders import EncoderMismatch, fast_encoder
from .faults import record_fault
from .fit import LengthPolicy, fit
from .formats import parse, parse_preference
from .formats.options import FormatOptions
from .read import decode
from .render import Renderer
from .shift import Row, rows_from_batch, rows_to_batch, shift
from .templates import ChatTemplate, resolve_template_source
from .tokenize import tokenize_batch
from .tokenizer import TokenizerInfo, load_tokenizer
from .turns import fit_conversation


@dataclass
class JobContext:
    """Everything a worker needs to process records, built once per process from the config."""

    config: PrepareConfig
    tokenizer: TokenizerInfo
    template: ChatTemplate | None
    renderer: Renderer
    format_options: FormatOptions
    length_policy: LengthPolicy
    encoder_note: str = ""  # why the fast encoder is not used, when it is not
    views: dict[int, JobContext] = field(default_factory=dict, repr=False)

    def for_dataset(self, index: int) -> JobContext:
        """The context for records of `config.datasets[index]`: its parse options, mask policy and template
        variables (`PrepareConfig.for_dataset`), the same tokenizer. Built once per process."""
        view = self.views.get(index)
        if view is None:
            config = self.config.for_dataset(index)
            template = self.template
            if template is not None and config.template_kwargs != self.config.template_kwargs:
                variables = {**template.variables, **config.template_kwargs}
                template = dataclasses.replace(template, variables=variables)
            view = dataclasses.replace(
                self,
                config=config,
                template=template,
                renderer=Renderer(template, self.tokenizer, config.render_options()),
                format_options=config.format_options(),
                length_policy=config.length_policy(),
                views={},
            )
            self.views[index] = view
        return view

    def encode(self, conversation: Conversation, inherited: list[bool]) -> list[TokenizedExample]:
        """Render and tokenize a shortened conversation (for turn-aware lengths) whose messages keep the training
        decisions `inherited` from the whole one; raises RecordError."""
        examples = tokenize_batch(self.tokenizer, self.renderer.render(conversation, inherited))
        for example in examples:
            if isinstance(example, RecordError):
                raise example
        return [e for e in examples if isinstance(e, TokenizedExample)]

    @classmethod
    def from_config(cls, config: PrepareConfig) -> JobContext:
        tokenizer = load_tokenizer(config.tokenizer)
        template = load_job_template(config, tokenizer)
        if template is not None:
            tokenizer = tokenizer.for_template(template.source)
        note = ""
        if config.encoder in ("tiktoken", "tiktoken-if-proven"):
            fast, note = fast_encoder(tokenizer.tokenizer)
            if fast is not None:
                tokenizer = tokenizer.with_encoder(fast)
            elif config.encoder == "tiktoken":
                raise SetupError(f"--encoder tiktoken cannot encode exactly like {config.tokenizer}: {note}")
        return cls(
            config=config,
            tokenizer=tokenizer,
            template=template,
            renderer=Renderer(template, tokenizer, config.render_options()),
            format_options=config.format_options(),
            length_policy=config.length_policy(),
            encoder_note=note,
        )


def load_job_template(config: PrepareConfig, tokenizer: TokenizerInfo) -> ChatTemplate | None:
    """The chat template, or None when the tokenizer has none and no record needs one (plain text)."""
    if config.chat_template is None and tokenizer.chat_template is None:
        return None
    name, source = resolve_template_source(config.chat_template, tokenizer.chat_template, config.tokenizer)
    variables = {**tokenizer.special_tokens, **config.template_kwargs}
    return ChatTemplate(
        name=name,
        source=source,
        variables=variables,
        template_date=config.template_date,
        limits=config.template_limits(),
    )


@dataclass
class BatchResult:
    """One batch's outcome per record, and every row written, in record order, as one Arrow record batch of the
    job's layout (`SHARD_SCHEMA`, or a preference layout: what crosses from a worker to the writer, buffers, not
    millions of Python objects)."""

    outcomes: list[Outcome] = field(default_factory=list)
    batch: pa.RecordBatch = field(default_factory=lambda: rows_to_batch([]))

    @property
    def rows(self) -> list[Row]:
        """The rows as `Row`s, for the combiners that pack documents and for the audit (SFT rows only)."""
        return rows_from_batch(self.batch)


def fit_record(
    record: Record, examples: list[TokenizedExample], context: JobContext, policy: LengthPolicy | None = None
) -> list[TokenizedExample | RecordError]:
    """The length policy (the job's, unless given) over one record's examples: by whole turns for a conversation
    (`turns`), else by tokens."""
    policy = policy or context.length_policy
    if isinstance(record, Conversation):
        return fit_conversation(record, examples, policy, context.renderer.options.mask, context.encode)
    return [row for example in examples for row in fit(example, policy)]


def process_batch(raw_records: list[RawRecord], context: JobContext) -> BatchResult:
    """parse -> render -> tokenize -> fit -> shift for a batch, in order; one Outcome per input record.

    One record never stops the job: an unexpected exception anywhere in the stages (a library that raises on
    some input, a bug of ours) makes the batch run again record by record, and the record that raises is rejected
    as `internal_error` with the exception, its stage unknown but its source exact. The rest of the batch gives the
    same rows as it would have (records are processed independently). Job-level signals pass through: a
    `SetupError`, and `EncoderMismatch`, which restarts the job with the other encoder.

    With `datasets:`, each run of records of one dataset is processed with that dataset's context (`for_dataset`)
    and its outcomes say which dataset they came from."""
    if context.config.datasets:
        parts = []
        for index, run in groupby(raw_records, key=lambda raw: raw.extra.get("dataset")):
            part = _guarded(list(run), context if index is None else context.for_dataset(index))
            for outcome in part.outcomes:
                outcome.dataset = index
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return BatchResult(
            outcomes=[outcome for part in parts for outcome in part.outcomes],
            batch=pa.concat_batches([part.batch for part in parts]),
        )
    return _guarded(raw_records, context)


def _guarded(raw_records: list[RawRecord], context: JobContext) -> BatchResult:
    try:
        return _process_batch(raw_records, context)
    except (SetupError, EncoderMismatch):
        raise
    except Exception as exc:
        if len(raw_records) == 1:
            error = RecordError("internal_error", f"{type(exc).__name__}: {exc}"[:500])
            batch = pa.RecordBatch.from_pylist([], schema=LAYOUTS[context.config.layout][0])  # the job's layout
            return BatchResult(outcomes=[Outcome.failed(raw_records[0].source, error)], batch=batch)
        parts = [_guarded([raw], context) for raw in raw_records]
        return BatchResult(
            outcomes=[outcome for part in parts for outcome in part.outcomes],
            batch=pa.concat_batches([part.batch for part in parts]),
        )


def _process_batch(raw_records: list[RawRecord], context: JobContext) -> BatchResult:
    """The stages, for SFT rows or (a preference job, `PrepareConfig.preference`) pair or KTO rows (`pairs`)."""
    if context.config.preference:
        from .pairs import process_preference  # pairs builds on this module

        outcomes, batch = process_preference(parse_records(raw_records, context, parse_preference), context)
        return BatchResult(outcomes, batch)
    records = parse_records(raw_records, context)
    outcomes, rows = make_rows(records, context)
    if context.config.dedup is not None:  # each parsed record's digest, for the job to compare in order (`dedup`)
        for (_, record), outcome in zip(records, outcomes, strict=True):
            if not isinstance(record, RecordError):
                outcome.digest = record_digest(record)
    return BatchResult(outcomes, rows_to_batch(rows))


Parsed = list[tuple[RawRecord, Any]]  # each raw record with what its parser made of it, or the RecordError


def parse_records(raw_records: list[RawRecord], context: JobContext, parser: Callable[..., Any] = parse) -> Parsed:
    """Stage 2 over a batch: each record decoded and parsed (`parse` for SFT jobs, `parse_preference` for
    preference jobs), or the error that says why not."""
    records: Parsed = []
    for raw in map(decode, raw_records):
        record_fault("read", raw)
        if raw.error is not None:
            records.append((raw, RecordError(raw.error, raw.detail)))
            continue
        try:
            record_fault("parse", raw)
            records.append((raw, parser(raw.value, raw.source, raw.extra.get("format"), context.format_options)))
        except RecordError as exc:
            records.append((raw, exc))
    return records


def make_rows(
    records: Parsed, context: JobContext, policy: LengthPolicy | None = None
) -> tuple[list[Outcome], list[Row]]:
    """render -> tokenize -> fit -> shift for parsed records, in order: one Outcome per record, and the rows."""
    rendered: list[list[Any] | RecordError] = []
    for raw, record in records:
        if isinstance(record, RecordError):
            rendered.append(record)
            continue
        try:
            record_fault("render", raw)
            rendered.append(context.renderer.render(record))
        except RecordError as exc:
            rendered.append(exc)

    for (raw, _), item in zip(records, rendered, strict=True):
        if not isinstance(item, RecordError):
            record_fault("tokenize", raw)
    flat = [example for item in rendered if not isinstance(item, RecordError) for example in item]
    tokenized = iter(tokenize_batch(context.tokenizer, flat))

    outcomes: list[Outcome] = []
    written: list[Row] = []
    for (raw, record), item in zip(records, rendered, strict=True):
        if isinstance(item, RecordError):
            outcomes.append(Outcome.failed(raw.source, item))
            continue
        examples = [next(tokenized) for _ in item]
        failure = next((e for e in examples if isinstance(e, RecordError)), None)
        rows: list[Row] = []
        drops: list[RecordError] = []
        if failure is None:
            assert not isinstance(record, RecordError)
            record_fault("fit", raw)
            fitted = fit_record(record, [e for e in examples if isinstance(e, TokenizedExample)], context, policy)
            for row in fitted:
                if isinstance(row, RecordError):
                    drops.append(row)
                else:
                    record_fault("shift", raw)
                    rows.append(shift(row))
        if failure is not None:
            outcomes.append(Outcome.failed(raw.source, failure))
        elif not rows:
            nothing = RecordError("no_trainable_tokens", "the length policy left no row")
            outcomes.append(Outcome.failed(raw.source, drops[0] if drops else nothing))
        else:
            dropped = tuple(d.reason for d in drops)
            outcomes.append(Outcome(raw.source, "written", rows=len(rows), rows_dropped=dropped))
            written.extend(rows)
    return outcomes, written
