"""ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value"}], ...}`.

A `function_call` turn is an assistant turn whose value is the JSON `{"name", "arguments"}` of one call; an
`observation` turn is the tool's answer. A top-level `system` and a `tools` JSON string are read too.
"""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import Conversation, Message, SourceRef
from .common import as_list, as_str, as_train_flag, parse_template_kwargs, parse_tool_call, parse_tools, require
from .options import TOOL_CALL_ROLES, FormatOptions


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Conversation:
    conv_field = options.field("conversations")
    turns = as_list(require(value, conv_field), conv_field)
    if not turns:
        raise RecordError("empty_conversation", f"{conv_field!r} is empty", field=conv_field)
    messages: list[Message] = []
    system = value.get(options.field("system"))
    if system:
        messages.append(Message(role="system", content=as_str(system, options.field("system"))))
    from_field, value_field = options.field("from"), options.field("value")
    for i, turn in enumerate(turns):
        where = f"{conv_field}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError("wrong_type", f"{where} must be an object", field=where)
        speaker = as_str(require(turn, from_field, f"{where}."), f"{where}.{from_field}")
        role = options.role(speaker)
        if role is None:
            raise RecordError("unknown_role", f"{where} is from {speaker!r}", field=f"{where}.{from_field}")
        text = as_str(require(turn, value_field, f"{where}."), f"{where}.{value_field}", allow_none=True)
        train = as_train_flag(turn.get("weight", turn.get("train")), f"{where}.weight")
        if speaker in TOOL_CALL_ROLES and options.role(speaker) == "assistant":
            call = parse_tool_call(text, f"{where}.{value_field}")
            messages.append(Message(role="assistant", content="", tool_calls=[call], train=train))
        else:
            messages.append(Message(role=role, content=text, train=train))
    tools = parse_tools(value.get(options.field("tools")), options.field("tools"))
    kwargs_field = options.field("template_kwargs")
    kwargs = parse_template_kwargs(value.get(kwargs_field), kwargs_field)
    return Conversation(messages=messages, source=source, tools=tools, template_kwargs=kwargs)
