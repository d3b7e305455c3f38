"""Stage 2, parse: a decoded JSON object -> one normalized `Record` (see `schemas.records`).

One module per input format; `detect` names the format of a file from its first record, so every record of a
file is read the same way and a record that lacks a field is reported as such, not silently re-guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import RecordError
from ...schemas.records import Record, SourceRef
from . import alpaca, openai, prompt_completion, sharegpt, text
from .checks import check_lengths, check_text
from .options import FormatOptions

PARSERS: dict[str, Callable[[dict[str, Any], SourceRef, FormatOptions], Record]] = {
    "openai": openai.parse,
    "sharegpt": sharegpt.parse,
    "alpaca": alpaca.parse,
    "prompt_completion": prompt_completion.parse,
    "text": text.parse,
}
FORMAT_NAMES = tuple(PARSERS)


def detect(value: Any, options: FormatOptions) -> str | None:
    """The format whose identifying fields the record has, or None."""
    if not isinstance(value, dict):
        return None
    f = options.field
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
    """The record of a decoded value, checked (`checks`): valid Unicode text, messages within the length limit."""
    if not isinstance(value, dict):
        raise RecordError("not_an_object", f"got {type(value).__name__}")
    check_text(value)
    fmt = fmt or detect(value, options)
    if fmt is None:
        raise RecordError("unknown_format", f"fields: {', '.join(sorted(map(str, value))[:8]) or '(none)'}")
    record = PARSERS[fmt](value, source, options)
    check_lengths(record, options.max_message_chars)
    return record
