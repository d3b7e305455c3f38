"""Alpaca: `{"instruction", "input"?, "output", "system"?, "history"?}` -> system? + (user, assistant)*.

The user turn is the instruction, then `alpaca_join` (default a blank line), then the input when there is one.
LLaMA-Factory's `history` (a list of [query, answer] pairs) comes before it, as earlier turns.
"""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import Conversation, Message, SourceRef
from .common import as_list, as_str, require
from .options import FormatOptions


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Conversation:
    f = options.field
    instruction = as_str(require(value, f("instruction")), f("instruction"), allow_none=True)
    extra = as_str(value.get(f("input")), f("input"), allow_none=True)
    output = as_str(require(value, f("output")), f("output"), allow_none=True)
    prompt = options.alpaca_join.join(part for part in (instruction, extra) if part)
    messages: list[Message] = []
    system = value.get(f("system"))
    if system:
        messages.append(Message(role="system", content=as_str(system, f("system"))))
    for i, pair in enumerate(as_list(value.get(f("history")) or [], f("history"))):
        where = f"{f('history')}[{i}]"
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise RecordError("wrong_type", f"{where} must be a [query, answer] pair", field=where)
        messages.append(Message(role="user", content=as_str(pair[0], f"{where}[0]")))
        messages.append(Message(role="assistant", content=as_str(pair[1], f"{where}[1]")))
    messages.append(Message(role="user", content=prompt))
    messages.append(Message(role="assistant", content=output))
    return Conversation(messages=messages, source=source)
