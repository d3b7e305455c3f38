"""Stage 2, parse: a decoded JSON object -> one normalized `Record` (see `schemas.records`).

One module per input format; `detect` names the format of a file from its first record, so every record of a
file is read the same way and a record that lacks a field is reported as such, not silently re-guessed.

Preference data (`preference` pairs, `kto` judged answers) has formats of its own, read into its own records by
`parse_preference`; `parse`, the SFT job's reading, rejects a pair and reads a KTO record's conversation (see
`formats.preference`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import RecordError
from ...schemas.preference import LAYOUT_KTO, LAYOUT_PAIRS
from ...schemas.records import Conversation, Message, PreferenceRecord, Record, SourceRef
from . import alpaca, openai, preference, prompt_completion, sharegpt, text
from .checks import check_lengths, check_text
from .options import FormatOptions

PARSERS: dict[str, Callable[[dict[str, Any], SourceRef, FormatOptions], Record]] = {
    "openai": openai.parse,
    "sharegpt": sharegpt.parse,
    "alpaca": alpaca.parse,
    "prompt_completion": prompt_completion.parse,
    "text": text.parse,
    "preference": preference.reject_in_sft,
    "kto": preference.parse_kto_as_sft,
}
PREFERENCE_PARSERS: dict[str, Callable[[dict[str, Any], SourceRef, FormatOptions], PreferenceRecord]] = {
    "preference": preference.parse,
    "kto": preference.parse_kto,
}
FORMAT_NAMES = tuple(PARSERS)
# The formats a job reads as preference data, and the layout each makes (a job of one of them is a preference job:
# `PrepareConfig.layout`, resolved from the inputs by `inputs.job_format`).
PREFERENCE_LAYOUTS: dict[str, str] = {"preference": LAYOUT_PAIRS, "kto": LAYOUT_KTO}


def detect(value: Any, options: FormatOptions) -> str | None:
    """The format whose identifying fields the record has, or None."""
    if not isinstance(value, dict):
        return None
    f = options.field
    # Preference fields first: pair datasets often carry a chat column too (UltraFeedback's `messages`).
    if f("chosen") in value and f("rejected") in value:
        return "preference"
    if isinstance(value.get(f("label")), bool) and (
        f("messages") in value or (f("prompt") in value and f("completion") in value)
    ):
        return "kto"
    if f("messages") in value:
        return "openai"
    if f("conversations") in value:
        return "sharegpt"
    if f("instruction") in value and f("output") in value:
        return "alpaca"
    if f("prompt") in value and f("completion") in value:
        return "prompt_completion"
    if f("text") in value:
        return "text"
    return None


def parse(value: Any, source: SourceRef, fmt: str | None, options: FormatOptions) -> Record:
    """The record an SFT job trains on, checked (`checks`): valid Unicode text, messages within the length limit."""
    record = PARSERS[_format_of(value, fmt, options, PARSERS)](value, source, options)
    if options.system is not None and isinstance(record, Conversation):
        with_system_prompt(record, options.system, options.system_replace)
    check_lengths(record, options.max_message_chars)
    return record


def with_system_prompt(record: Conversation, text: str, replace: bool) -> None:
    """`system:` in the config: the prompt becomes the first message where the conversation has no system
    message; with `replace`, it also takes the place of the data's own first system message."""
    first = record.messages[0] if record.messages else None
    if first is not None and first.role == "system":
        if replace:
            first.content = text
        return
    record.messages.insert(0, Message(role="system", content=text))


def parse_preference(value: Any, source: SourceRef, fmt: str | None, options: FormatOptions) -> PreferenceRecord:
    """The record a preference job trains on: a `PreferencePair` or a `PreferenceExample`, checked the same way."""
    record = PREFERENCE_PARSERS[_format_of(value, fmt, options, PREFERENCE_PARSERS)](value, source, options)
    check_lengths(record, options.max_message_chars)
    return record


def _format_of(value: Any, fmt: str | None, options: FormatOptions, parsers: dict[str, Any]) -> str:
    if not isinstance(value, dict):
        raise RecordError("not_an_object", f"got {type(value).__name__}")
    check_text(value)
    fmt = fmt or detect(value, options)
    if fmt not in parsers:
        fields = ", ".join(sorted(map(str, value))[:8]) or "(none)"
        detail = f"fields: {fields}" if fmt is None else f"{fmt} data is not preference data; fields: {fields}"
        raise RecordError("unknown_format", detail)
    return fmt
