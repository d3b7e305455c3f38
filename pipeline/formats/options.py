"""How input fields and role names map onto lossmask's record (every name can be remapped in the config), and
the limits on what one record may hold, which reading and parsing enforce."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_FIELDS: dict[str, str] = {
    # OpenAI chat
    "messages": "messages",
    "role": "role",
    "content": "content",
    "weight": "weight",
    "tools": "tools",
    "template_kwargs": "chat_template_kwargs",  # per-record template variables (TRL's name), any chat format
    # ShareGPT
    "conversations": "conversations",
    "from": "from",
    "value": "value",
    "system": "system",
    # Alpaca
    "instruction": "instruction",
    "input": "input",
    "output": "output",
    "history": "history",
    # prompt / completion
    "prompt": "prompt",
    "completion": "completion",
    # plain text
    "text": "text",
    # preference data (TRL's names): `prompt` above, then each side, or KTO's judgement of one answer
    "chosen": "chosen",
    "rejected": "rejected",
    "label": "label",
}

DEFAULT_ROLES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
    # ShareGPT's function_call turn is an assistant turn that calls a tool (its value is {"name", "arguments"}).
    "function_call": "assistant",
}

TOOL_CALL_ROLES = frozenset({"function_call"})

# A record longer than this is skipped while reading, never held whole (`record_too_large`).
MAX_RECORD_BYTES = 64 << 20
# One message, text, prompt or completion longer than this is rejected before it is rendered or tokenized
# (`message_too_long`): tokenizing costs ~150 bytes of memory per character (measured: SmolLM2, 4M characters).
MAX_MESSAGE_CHARS = 2 << 20


@dataclass(frozen=True)
class FormatOptions:
    fields: dict[str, str] = field(default_factory=dict)  # lossmask name -> input field name (overrides)
    roles: dict[str, str] = field(default_factory=dict)  # input role name -> lossmask role (overrides)
    alpaca_join: str = "\n\n"  # between an Alpaca instruction and its input
    max_record_bytes: int = MAX_RECORD_BYTES
    max_message_chars: int = MAX_MESSAGE_CHARS

    def field(self, name: str) -> str:
        return self.fields.get(name, DEFAULT_FIELDS[name])

    def role(self, name: str) -> str | None:
        if name in self.roles:
            return self.roles[name]
        return DEFAULT_ROLES.get(name) or DEFAULT_ROLES.get(name.lower())
