"""Preference records -> pair rows (DPO) or KTO rows, through the stages every SFT row goes through.

A pair's prompt is rendered once: for messages, `Renderer.generation_prompt` (the prompt's messages and the
assistant header the model is given at inference); for raw text, the prompt string. Each side is the record an
SFT job would read (the prompt's messages, which never train, then that side's completion), rendered, labeled
and verified by `render` and `tokenize` exactly like any row, so `mask` alone decides what counts. What this
module adds are checks that only a pair needs, each a reason of `schemas.reasons`:

- each side's rendering begins with the prompt's text, and its tokens with the prompt's own tokens
  (`preference_prompt_rendering`, `preference_prompt_boundary`); so `prompt_length` tokens are identical on both
  sides, and none of them counts (else `preference_prompt_rendering`);
- each side is one row (`preference_side_rows`), counts at least one completion token (`preference_empty_side`),
  does not count two stop tokens in a row (`preference_double_stop`), and the sides differ
  (`preference_identical_sides`);
- lengths (`fit.fit_pair`): `--max-length` positions per side, the prompt cut from its left end, both sides
  alike; a pair whose completions would be cut is dropped (`too_long`).

A KTO record is its SFT record (`PreferenceExample.record`) made into one row by `batch.make_rows` under the
preference length policy (`fit.keeping_answers`), with its label.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import RecordError
from ..schemas.examples import RenderedExample, TokenizedExample
from ..schemas.preference import (
    KTO_SHARD_SCHEMA,
    PAIR_SHARD_SCHEMA,
    PairRow,
    PairSide,
    kto_rows_to_batch,
    pair_rows_to_batch,
)
from ..schemas.records import Conversation, PreferenceExample, PreferencePair, PromptCompletion, RawRecord
from ..schemas.shards import RowFlag
from .accounting import Outcome
from .batch import JobContext, Parsed, make_rows
from .faults import record_fault
from .fit import fit_pair, keeping_answers
from .shift import rows_to_batch
from .tokenize import token_offsets, tokenize_batch


def process_preference(records: Parsed, context: JobContext) -> tuple[list[Outcome], pa.RecordBatch]:
    """Parsed preference records -> one Outcome each, and the rows of the job's layout (pairs or KTO)."""
    if context.config.layout == "kto":
        return _kto_rows(records, context)
    outcomes: list[Outcome] = []
    rows: list[PairRow] = []
    for raw, record in records:
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, PreferencePair):
                raise RecordError("unknown_format", "a pairs job met a KTO record; prepare it with --format kto")
            record_fault("render", raw)
            row = pair_row(record, context)
        except RecordError as exc:
            outcomes.append(Outcome.failed(raw.source, exc))
            continue
        rows.append(row)
        outcomes.append(Outcome(raw.source, "written", rows=1))
    batch = pair_rows_to_batch(rows) if rows else pa.RecordBatch.from_pylist([], schema=PAIR_SHARD_SCHEMA)
    return outcomes, batch


# pairs


def side_records(pair: PreferencePair) -> tuple[Conversation | PromptCompletion, Conversation | PromptCompletion]:
    """The SFT record of each side: the prompt (never trained), then that side's completion."""
    if not pair.conversational:
        assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
        return (
            PromptCompletion(pair.prompt, pair.chosen, pair.source),
            PromptCompletion(pair.prompt, pair.rejected, pair.source),
        )
    assert isinstance(pair.prompt, list) and isinstance(pair.chosen, list) and isinstance(pair.rejected, list)
    prompt = [dataclasses.replace(m, train=False) for m in pair.prompt]

    def side(completion: list[Any]) -> Conversation:
        return Conversation(prompt + completion, pair.source, tools=pair.tools, template_kwargs=pair.template_kwargs)

    return side(pair.chosen), side(pair.rejected)


def pair_row(pair: PreferencePair, context: JobContext) -> PairRow:
    """The verified pair row of one record, or the RecordError that says why it is rejected or dropped."""
    chosen, rejected = side_records(pair)
    renderer = context.renderer
    sides: list[RenderedExample] = []
    for record in (chosen, rejected):
        rendered = renderer.render(record)
        if len(rendered) != 1:
            raise RecordError("preference_side_rows", f"a side renders as {len(rendered)} rows")
        sides.append(rendered[0])
    if isinstance(chosen, Conversation):
        prompt_text = renderer.generation_prompt(chosen, len(pair.prompt))
    else:
        prompt_text = chosen.prompt
    for name, side in zip(("chosen", "rejected"), sides, strict=True):
        if not side.text.startswith(prompt_text):
            at = next((i for i, (a, b) in enumerate(zip(side.text, prompt_text, strict=False)) if a != b), None)
            at = min(len(side.text), len(prompt_text)) if at is None else at
            raise RecordError(
                "preference_prompt_rendering",
                f"the {name} side's rendering leaves the prompt at char {at}: {side.text[max(0, at - 20) : at + 20]!r}",
            )
    tokenized = tokenize_batch(context.tokenizer, sides)
    for item in tokenized:
        if isinstance(item, RecordError):
            raise item
    side_tokens = [t for t in tokenized if isinstance(t, TokenizedExample)]
    offsets = token_offsets(context.tokenizer, sides)
    p = _prompt_tokens(side_tokens, offsets, len(prompt_text))
    prompt_ids = side_tokens[0].ids[:p]
    token_id = context.tokenizer.tokenizer.token_to_id
    stops = {i for i in map(token_id, context.tokenizer.stop_tokens) if i is not None}
    for name, side in zip(("chosen", "rejected"), side_tokens, strict=True):
        _check_side(name, side, prompt_ids, stops)
    if np.array_equal(side_tokens[0].ids, side_tokens[1].ids):
        raise RecordError("preference_identical_sides", "chosen and rejected are the same tokens")
    kept = fit_pair(p, side_tokens[0].ids.size - p, side_tokens[1].ids.size - p, context.length_policy)
    if isinstance(kept, RecordError):
        raise kept
    cut = p - kept
    flags = side_tokens[0].flags | side_tokens[1].flags | (int(RowFlag.TRUNCATED) if cut else 0)
    chosen_side, rejected_side = (PairSide.from_tokens(t.ids[cut:], t.trainable[cut:]) for t in side_tokens)
    return PairRow(chosen_side, rejected_side, kept, str(pair.source), pair.source.index, flags)


def _prompt_tokens(sides: list[TokenizedExample], offsets: list[np.ndarray], length: int) -> int:
    """How many tokens of each side are the prompt's `length` characters: the leading tokens that begin inside
    them (a BOS the tokenizer adds included). The last of them must end there too, not run on into the completion,
    and both sides must have the same ones; else the pair is rejected (`preference_prompt_boundary`)."""
    counts = []
    for name, starts_ends in zip(("chosen", "rejected"), offsets, strict=True):
        begins_inside = starts_ends[:, 0] < length
        count = int(np.argmin(begins_inside)) if not begins_inside.all() else int(begins_inside.size)
        if count and starts_ends[count - 1, 1] > length:
            a, b = (int(x) for x in starts_ends[count - 1])
            raise RecordError(
                "preference_prompt_boundary",
                f"on the {name} side, token {count - 1} (chars {a}-{b}) joins the prompt's end (char {length}) to the "
                "completion",
            )
        counts.append(count)
    if counts[0] != counts[1] or not np.array_equal(sides[0].ids[: counts[0]], sides[1].ids[: counts[1]]):
        raise RecordError(
            "preference_prompt_boundary",
            f"the prompt is {counts[0]} tokens before the chosen completion and {counts[1]} before the rejected one, "
            "or other tokens: the completions change how the prompt's end is tokenized",
        )
    return counts[0]


def _check_side(name: str, side: TokenizedExample, prompt_ids: np.ndarray, stops: set[int]) -> None:
    """The rules a side must meet beyond those of any row (the module docstring)."""
    p = prompt_ids.size
    if side.ids.size < p or not np.array_equal(side.ids[:p], prompt_ids):
        at = int(np.argmax(side.ids[: min(p, side.ids.size)] != prompt_ids[: min(p, side.ids.size)]))
        raise RecordError(
            "preference_prompt_boundary", f"the {name} side's tokens leave the prompt's {p} tokens at token {at}"
        )
    if side.trainable[:p].any():
        raise RecordError("preference_prompt_rendering", f"the {name} side counts a token of the prompt")
    counted = np.flatnonzero(side.trainable[p:]) + p
    if counted.size == 0:
        raise RecordError("preference_empty_side", f"no token of the {name} completion counts")
    ids = side.ids[counted]
    adjacent = np.flatnonzero((np.diff(counted) == 1) & np.isin(ids[:-1], list(stops)) & np.isin(ids[1:], list(stops)))
    if stops and adjacent.size:
        raise RecordError("preference_double_stop", f"the {name} side counts stop tokens {ids[adjacent[0] :][:2]}")


# KTO


def _kto_rows(records: Parsed, context: JobContext) -> tuple[list[Outcome], pa.RecordBatch]:
    """Each KTO record's SFT record made into one row (`batch.make_rows`), its prompt cut from the left and its
    answer never (`fit.keeping_answers`), with its label."""
    inner: list[tuple[RawRecord, Any]] = []
    for raw, record in records:
        if isinstance(record, PreferencePair):
            record = RecordError("unknown_format", "a KTO job met a pair; prepare it with --format preference")
        inner.append((raw, record.record if isinstance(record, PreferenceExample) else record))
    outcomes, rows = make_rows(inner, context, keeping_answers(context.length_policy))
    labels: list[bool] = []
    kept_rows = []
    position = 0
    for k, ((_, record), outcome) in enumerate(zip(records, outcomes, strict=True)):
        mine = rows[position : position + outcome.rows]
        position += outcome.rows
        if outcome.status != "written":
            continue
        if outcome.rows != 1:
            error = RecordError("preference_side_rows", f"the judged answer renders as {outcome.rows} rows")
            outcomes[k] = Outcome.failed(outcome.source, error)
            continue
        assert isinstance(record, PreferenceExample)
        kept_rows.extend(mine)
        labels.append(record.label)
    if not kept_rows:
        return outcomes, pa.RecordBatch.from_pylist([], schema=KTO_SHARD_SCHEMA)
    return outcomes, kto_rows_to_batch(rows_to_batch(kept_rows), labels)
