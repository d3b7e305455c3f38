"""Tool calls as the data gives them, and the two documented changes a template may need.

A call's `arguments` keep the type the data gave: a JSON string stays a string, an object stays an object (the
probe, `templates.probe`, learns which the template takes). Only where the template cannot take that type:
- it needs an object (`{{ arguments | tojson }}` would quote a string, GLM and Qwen3.5 iterate its items): a
  string that decodes to a JSON object is decoded;
- it needs a string (DeepSeek concatenates `'...' + arguments`): an object is encoded with `json.dumps`
  (`ensure_ascii=False`, default separators, key order kept).
Either way the rendering is verified like any other, and the row is flagged TOOL_ARGUMENTS_CONVERTED.

`--tool-call-ids generate` replaces every call's id by one derived from the record (`generate_call_ids`), for
templates with a rule about ids (Mistral v3: 9 alphanumeric characters), keeping tool results paired with calls.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any

from ..schemas.records import Conversation, Message, ToolCall

ARGUMENT_KINDS = ("either", "object", "string")
_ALPHABET = string.ascii_letters + string.digits


def converted_arguments(arguments: dict[str, Any] | str, kind: str) -> dict[str, Any] | str | None:
    """The arguments in the type a template of `kind` takes, or None when they already are."""
    if kind == "object" and isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError:
            return None
        return decoded if isinstance(decoded, dict) else None
    if kind == "string" and isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    return None


def generate_call_ids(conversation: Conversation) -> Conversation:
    """Every tool call gets a 9-character alphanumeric id derived from the record's messages and the call's place
    in them; each tool result gets the id of the call it answers (by the data's id, else in order)."""
    seed = hashlib.sha256(
        json.dumps([[m.role, m.content] for m in conversation.messages], ensure_ascii=False).encode("utf-8")
    ).digest()
    renamed: dict[str, str] = {}
    pending: list[str] = []
    messages: list[Message] = []
    for i, message in enumerate(conversation.messages):
        calls = None
        if message.tool_calls:
            calls = []
            for k, call in enumerate(message.tool_calls):
                new_id = _call_id(seed, i, k)
                if call.id is not None:
                    renamed[call.id] = new_id
                pending.append(new_id)
                calls.append(ToolCall(call.name, call.arguments, new_id))
        call_id = message.tool_call_id
        if message.role == "tool":
            call_id = renamed.get(call_id, call_id) if call_id is not None else (pending[0] if pending else None)
            if call_id in pending:
                pending.remove(call_id)
        messages.append(
            Message(message.role, message.content, message.reasoning, calls, message.name, call_id, message.train)
        )
    return Conversation(messages, conversation.source, conversation.tools, template_kwargs=conversation.template_kwargs)


def _call_id(seed: bytes, message: int, call: int) -> str:
    digest = hashlib.sha256(seed + f":{message}:{call}".encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:9])
