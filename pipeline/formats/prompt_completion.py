"""Prompt/completion, as TRL defines it.

Strings -> `PromptCompletion`: raw text, no chat template, loss on the completion only.
Message lists -> a `Conversation` whose prompt messages never train and whose completion messages follow the
mask policy (TRL's conversational prompt-completion).
"""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import Conversation, PromptCompletion, Record, SourceRef
from .common import require
from .openai import parse_message
from .options import FormatOptions


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Record:
    pf, cf = options.field("prompt"), options.field("completion")
    prompt, completion = require(value, pf), require(value, cf)
    if isinstance(prompt, str) and isinstance(completion, str):
        return PromptCompletion(prompt=prompt, completion=completion, source=source)
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = [parse_message(m, f"{pf}[{i}]", options) for i, m in enumerate(prompt)]
        for message in messages:
            message.train = False
        messages += [parse_message(m, f"{cf}[{i}]", options) for i, m in enumerate(completion)]
        if not messages:
            raise RecordError("empty_conversation", "prompt and completion are both empty", field=pf)
        return Conversation(messages=messages, source=source)
    raise RecordError(
        "wrong_type",
        f"{pf!r} and {cf!r} must both be strings or both be message lists, "
        f"got {type(prompt).__name__} and {type(completion).__name__}",
        field=pf,
    )
