"""What every record must satisfy once parsed, whatever its format: text that is Unicode, messages of bounded length.

Both are checked here, where records are parsed, so that no later stage ever sees a lone surrogate (which the
tokenizer cannot encode: it raised a TypeError for the whole batch) or a message whose tokenization alone would
take gigabytes. Each is one record's `RecordError`; the job goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ...errors import RecordError
from ...schemas.records import (
    Conversation,
    Message,
    PreferenceExample,
    PreferencePair,
    PreferenceRecord,
    PromptCompletion,
    Record,
    TextDocument,
)

# JSON can spell a lone half of a UTF-16 surrogate pair ("\ud800"); json.loads then makes a str that holds it,
# which is no Unicode text: it cannot be encoded as UTF-8. A pair that belongs together is one code point.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: Any) -> None:
    """Raise `invalid_text` when any string in a decoded record, key or value, holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise _invalid_text(value)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _invalid_text(value: Any) -> RecordError:
    """The error naming the first string with a lone surrogate (found again, now keeping paths: rare)."""
    for where, text in _strings(value, ""):
        found = _SURROGATE.search(text)
        if found is not None:
            point = f"U+{ord(found.group()):04X}"
            detail = f"{where or 'a key'} holds a lone surrogate {point} at character {found.start()}"
            return RecordError("invalid_text", detail, field=where or None)
    return RecordError("invalid_text", "a string holds a lone surrogate")  # pragma: no cover - found above


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            name = _printable(str(key))
            here = f"{where}.{name}" if where else name
            if isinstance(key, str):
                yield here, key
            yield from _strings(item, here)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")


def _printable(key: str) -> str:
    """A key as a field path may show it: a lone surrogate in the key itself spelled as its escape (`\\ud801`), so
    that the reject's detail and field can be written as UTF-8 like every other."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(key) else key


def check_lengths(record: Record | PreferenceRecord, max_chars: int) -> None:
    """Raise `message_too_long` when one message's content or reasoning, a text, a prompt or a completion has more
    than `max_chars` characters."""
    for what, text in _texts(record):
        if len(text) > max_chars:
            detail = f"{what} has {len(text):,} characters; max_message_chars is {max_chars:,}"
            raise RecordError("message_too_long", detail)


def _texts(record: Record | PreferenceRecord) -> Iterator[tuple[str, str]]:
    if isinstance(record, Conversation):
        yield from _message_texts(record.messages, "")
    elif isinstance(record, PromptCompletion):
        yield "the prompt", record.prompt
        yield "the completion", record.completion
    elif isinstance(record, TextDocument):
        yield "the text", record.text
    elif isinstance(record, PreferencePair):
        for side in ("prompt", "chosen", "rejected"):
            value = getattr(record, side)
            if isinstance(value, str):
                yield f"the {side}", value
            else:
                yield from _message_texts(value, f" of the {side}")
    elif isinstance(record, PreferenceExample):
        yield from _texts(record.record)


def _message_texts(messages: list[Message], where: str) -> Iterator[tuple[str, str]]:
    for i, message in enumerate(messages):
        yield f"message {i}{where} ({message.role})", message.content
        if message.reasoning is not None:
            yield f"the reasoning of message {i}{where}", message.reasoning
        for call in message.tool_calls or ():
            if isinstance(call.arguments, str):
                yield f"a tool call's arguments in message {i}{where}", call.arguments
