"""The per-record pipeline as one plain function: parse -> render -> tokenize -> mask -> fit -> shift.

`process_batch` takes a batch of raw records and a `JobContext` and returns rows plus one `Outcome` per record.
It knows nothing of files, processes or clusters: the engines (`lossmask.engines`) decide where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..schemas.records import RawRecord, Record
from .accounting import Outcome
from .config import PrepareConfig
from .errors import RecordError
from .fit import LengthPolicy, fit
from .formats import parse
from .formats.options import FormatOptions
from .read import decode
from .render import Renderer
from .shift import Row, shift
from .templates import ChatTemplate, resolve_template_source
from .tokenize import tokenize_batch
from .tokenizer import TokenizerInfo, load_tokenizer


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
    for raw in map(decode, raw_records):
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
