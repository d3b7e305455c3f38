"""Field readers shared by the format parsers, each raising a `RecordError` that names the field."""

from __future__ import annotations

import json
from typing import Any

from ...errors import RecordError
from ...schemas.records import ToolCall


def require(value: dict[str, Any], name: str, where: str = "") -> Any:
    if name not in value:
        raise RecordError("missing_field", f"{where}{name!r} is missing", field=f"{where}{name}")
    return value[name]


def as_str(value: Any, where: str, *, allow_none: bool = False) -> str:
    if isinstance(value, str):
        return value
    if value is None and allow_none:
        return ""
    raise RecordError("wrong_type", f"{where} must be a string, got {type(value).__name__}", field=where)


def as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list):
        return value
    raise RecordError("wrong_type", f"{where} must be a list, got {type(value).__name__}", field=where)


def as_train_flag(value: Any, where: str) -> bool | None:
    """OpenAI `weight` (0/1), LLaMA-Factory `loss_weight` (float) or a boolean `train`: > 0 means train."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value > 0
    raise RecordError("wrong_type", f"{where} must be a number or boolean, got {type(value).__name__}", field=where)


def parse_tool_call(value: Any, where: str) -> ToolCall:
    """OpenAI `{"id", "type": "function", "function": {"name", "arguments"}}` or a bare `{"name", "arguments"}`.

    The arguments keep the type the data gave (a JSON string stays a string); `tool_calls` converts them only
    for a template that cannot take that type.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError("wrong_type", f"{where} is not a JSON tool call: {exc.msg}", field=where) from None
    if not isinstance(value, dict):
        raise RecordError("wrong_type", f"{where} must be an object", field=where)
    function = value.get("function", value)
    if not isinstance(function, dict):
        raise RecordError("wrong_type", f"{where}.function must be an object", field=where)
    name = as_str(require(function, "name", f"{where}."), f"{where}.name")
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str | dict):
        raise RecordError("wrong_type", f"{where}.arguments must be an object or a JSON string", field=where)
    call_id = value.get("id")
    return ToolCall(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None)


def parse_template_kwargs(value: Any, where: str) -> dict[str, Any] | None:
    """Per-record chat-template variables: an object (or its JSON string); None when absent or empty."""
    if value is None or value == "" or value == {}:
        return None
    value = _decoded(value, where)
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise RecordError("wrong_type", f"{where} must be an object of template variables", field=where)
    return value


def parse_tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A `tools` list (or the JSON string of one, as in ShareGPT tool datasets); None when absent or empty.

    Each tool is given to templates in the OpenAI shape they are written for, `{"type": "function", "function":
    {...}}`: a bare function schema (`{"name", "description", "parameters"}`, as LLaMA-Factory's glaive data
    stores them) is wrapped, so `tool.function.name` works in every template."""
    if value is None or value == "" or value == []:
        return None
    value = _decoded(value, where)
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise RecordError("wrong_type", f"{where} must be a list of objects", field=where)
    return [_openai_tool(tool) for tool in value] or None


def _decoded(value: Any, where: str) -> Any:
    """A field that datasets store either as JSON or as the JSON string of it (ShareGPT's `tools`)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RecordError("wrong_type", f"{where} is not valid JSON: {exc.msg}", field=where) from None


def _openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if "function" not in tool and isinstance(tool.get("name"), str):
        return {"type": "function", "function": tool}
    return tool
