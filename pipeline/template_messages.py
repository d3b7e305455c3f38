"""Messages as a chat template receives them, each with its sentinel twin for the layout (see `templates.plan`).

`render` hands the template plain dicts (`role`, `content`, `reasoning_content`/`thinking`, `tool_calls`, ...).
A `TemplateMessage` holds that dict and the two texts that are data, the reasoning and the answer, so that the
layout can be built from a twin whose data are sentinels and the real text substituted back. Where the reasoning
sits in the content (a think block kept as it is, or a reasoning field written into one for a template that
ignores reasoning), the `ThinkFrame` around it is template markup, the same in twin and record.

Worked example, a template that ignores `reasoning_content` (Qwen2.5) and a record with reasoning "r":

    data["content"]   = "<think>\\nr\\n</think>\\n\\nA."
    twin["content"]   = "<think>\\n" + sentinel(REASONING, 1) + "\\n</think>\\n\\n" + sentinel(CONTENT, 1)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..schemas.records import Message
from .reasoning import ReasoningTags, ThinkFrame, inline_frame, split_think_block
from .templates.sentinels import CONTENT, REASONING, sentinel
from .tool_calls import converted_arguments


@dataclass(frozen=True)
class TemplateMessage:
    data: dict[str, Any]  # what the template receives for the real record
    reasoning: str  # the reasoning text ("" for none)
    answer: str  # the content text after any think block
    frame: ThinkFrame | None = None  # the think block around `reasoning` inside the content, when there is one
    converted: bool = False  # tool-call arguments were converted to the type the template takes (`tool_calls`)

    def shape(self) -> tuple[Any, ...]:
        """What can change the template's text around the message; its texts are replaced by sentinels."""
        data = self.data
        return (
            data["role"],
            bool(self.answer),
            bool(data.get("reasoning_content")),
            (self.frame.before, self.frame.between) if self.frame else None,
            json.dumps(data.get("tool_calls"), sort_keys=True) if data.get("tool_calls") else None,
            data.get("name"),
            data.get("tool_call_id"),
        )

    def twin(self, index: int) -> dict[str, Any]:
        """The message with sentinels in place of its texts."""
        out = dict(self.data)
        answer = sentinel(CONTENT, index) if self.answer else ""
        if self.frame is not None:
            out["content"] = self.frame.before + sentinel(REASONING, index) + self.frame.between + answer
        else:
            out["content"] = answer
        if self.data.get("reasoning_content"):
            out["reasoning_content"] = out["thinking"] = sentinel(REASONING, index)
        return out

    def text(self, kind: str) -> str:
        return self.answer if kind == CONTENT else self.reasoning


def template_messages(
    messages: list[Message], renders_reasoning: bool, tags: ReasoningTags, inline_fallback: bool, arguments: str
) -> list[TemplateMessage]:
    """The messages as the template sees them (see `reasoning` for the rules on think blocks, `tool_calls` for
    `arguments`, the type of tool-call arguments the template takes)."""
    out = []
    for message in messages:
        item = _template_message(message, renders_reasoning, tags, inline_fallback)
        converted = False
        for call in item.data.get("tool_calls") or ():
            new = converted_arguments(call["function"]["arguments"], arguments)
            if new is not None:
                call["function"]["arguments"], converted = new, True
        out.append(dataclasses.replace(item, converted=True) if converted else item)
    return out


def _template_message(
    message: Message, renders_reasoning: bool, tags: ReasoningTags, inline_fallback: bool
) -> TemplateMessage:
    data = message.to_template()
    reasoning, content = message.reasoning, message.content
    if message.role == "assistant" and reasoning is None and (found := split_think_block(content, tags)):
        frame, reasoning, answer = found
        if renders_reasoning:
            data["content"], data["reasoning_content"], data["thinking"] = answer, reasoning, reasoning
            return TemplateMessage(data, reasoning, answer)
        return TemplateMessage(data, reasoning, answer, frame)
    if reasoning and not renders_reasoning:
        data.pop("reasoning_content", None)
        data.pop("thinking", None)
        if not inline_fallback:
            return TemplateMessage(data, "", content)
        frame = inline_frame(tags)
        data["content"] = frame.before + reasoning + frame.between + content
        return TemplateMessage(data, reasoning, content, frame)
    return TemplateMessage(data, reasoning or "", content)
