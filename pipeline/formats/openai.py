"""OpenAI chat: `{"messages": [{"role", "content", "weight"?, "tool_calls"?, ...}], "tools"?}`.

Content may be a string or a list of parts. Text parts use `text` (OpenAI) or `value` (LLaMA-Factory v1);
LLaMA-Factory's `reasoning` and `tool_call` parts become the message's reasoning and tool calls.
"""

from __future__ import annotations

from typing import Any

from ...errors import RecordError
from ...schemas.records import Conversation, Message, SourceRef, ToolCall
from .common import as_list, as_str, as_train_flag, parse_template_kwargs, parse_tool_call, parse_tools, require
from .options import FormatOptions

REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
WEIGHT_FIELDS = ("loss_weight", "train")


def parse(value: dict[str, Any], source: SourceRef, options: FormatOptions) -> Conversation:
    messages_field = options.field("messages")
    raw_messages = as_list(require(value, messages_field), messages_field)
    if not raw_messages:
        raise RecordError("empty_conversation", f"{messages_field!r} is empty", field=messages_field)
    messages = [parse_message(m, f"{messages_field}[{i}]", options) for i, m in enumerate(raw_messages)]
    tools = parse_tools(value.get(options.field("tools")), options.field("tools"))
    kwargs_field = options.field("template_kwargs")
    kwargs = parse_template_kwargs(value.get(kwargs_field), kwargs_field)
    return Conversation(messages=messages, source=source, tools=tools, template_kwargs=kwargs)


def parse_message(raw: Any, where: str, options: FormatOptions) -> Message:
    if not isinstance(raw, dict):
        raise RecordError("wrong_type", f"{where} must be an object", field=where)
    role_field = options.field("role")
    role_name = raw.get(role_field)
    if not isinstance(role_name, str):  # the messages that say where they are wrong (built only for them)
        role_name = as_str(require(raw, role_field, f"{where}."), f"{where}.{role_field}")
    role = options.role(role_name)
    if role is None:
        raise RecordError("unknown_role", f"{where} has role {role_name!r}", field=f"{where}.{role_field}")
    content_field = options.field("content")
    if content_field not in raw and not raw.get("tool_calls"):
        raise RecordError("missing_field", f"{where}.{content_field} is missing", field=f"{where}.{content_field}")
    content = raw.get(content_field)
    if isinstance(content, str):  # what parse_content gives a string, without naming where it is
        text, part_reasoning, part_calls = content, None, []
    else:
        text, part_reasoning, part_calls = parse_content(content, f"{where}.{content_field}")

    reasoning = part_reasoning
    for name in REASONING_FIELDS:
        if raw.get(name) is not None:
            reasoning = as_str(raw[name], f"{where}.{name}")
            break
    tool_calls = part_calls
    if raw.get("tool_calls"):
        tool_calls = part_calls + [
            parse_tool_call(call, f"{where}.tool_calls[{i}]")
            for i, call in enumerate(as_list(raw["tool_calls"], f"{where}.tool_calls"))
        ]
    weight = raw.get(options.field("weight"))
    train = None if weight is None else as_train_flag(weight, f"{where}.{options.field('weight')}")
    for name in WEIGHT_FIELDS:
        if train is None and name in raw:
            train = as_train_flag(raw[name], f"{where}.{name}")
    name_value = raw.get("name")
    call_id = raw.get("tool_call_id")
    return Message(
        role=role,
        content=text,
        reasoning=reasoning,
        tool_calls=tool_calls or None,
        name=name_value if isinstance(name_value, str) else None,
        tool_call_id=call_id if isinstance(call_id, str) else None,
        train=train,
    )


def parse_content(value: Any, where: str) -> tuple[str, str | None, list[ToolCall]]:
    """(text, reasoning, tool calls) from a string or a list of content parts."""
    if value is None:
        return "", None, []
    if isinstance(value, str):
        return value, None, []
    if not isinstance(value, list):
        raise RecordError("wrong_type", f"{where} must be a string or a list of parts", field=where)
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for i, part in enumerate(value):
        here = f"{where}[{i}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RecordError("wrong_type", f"{here} must be an object", field=here)
        kind = part.get("type", "text")
        body = part.get("text", part.get("value"))
        if kind == "text":
            texts.append(as_str(body, f"{here}.text"))
        elif kind in ("reasoning", "thinking"):
            reasoning.append(as_str(body, f"{here}.value"))
        elif kind == "tool_call":
            calls.append(parse_tool_call(body, f"{here}.value"))
        else:
            raise RecordError("wrong_type", f"{here} has unsupported part type {kind!r} (text only)", field=here)
    return "".join(texts), ("\n".join(reasoning) if reasoning else None), calls
