"""The normalized input record every format parser produces and every later stage consumes.

Whatever the input looked like (OpenAI messages, ShareGPT, Alpaca, prompt/completion, plain text), it
becomes one `Record`: either a `Conversation` of `Message`s or a `TextDocument`, always with the
`SourceRef` that says where it came from, so that any reject or audit finding can point back to a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from. `line` is 1-based: a line of JSONL, the line a JSON array item starts on, a row of
    Parquet. `item` is the 0-based position of a JSON array item, since one line may hold a whole array."""

    file: str
    line: int
    index: int = 0  # position of the record in the whole input (0-based, across files), for stable ordering
    item: int | None = None

    def __str__(self) -> str:
        """`file:line`, or `file:line[item]` for an item of a JSON array (jq's `.[item]`)."""
        return f"{self.file}:{self.line}" if self.item is None else f"{self.file}:{self.line}[{self.item}]"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for every record that crosses to a worker and back: by its fields, since the state methods
        # `dataclass(slots=True)` generates call `dataclasses.fields()` per object (3x slower, both ways).
        return (SourceRef, (self.file, self.line, self.index, self.item))


@dataclass(slots=True)
class ToolCall:
    """One function call made by an assistant message, in the shape chat templates expect."""

    name: str
    arguments: dict[str, Any] | str
    id: str | None = None

    def to_template(self) -> dict[str, Any]:
        call: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id is not None:
            call["id"] = self.id
        return call


@dataclass(slots=True)
class Message:
    """One turn. `train` is the data's own say (OpenAI `weight`, LLaMA-Factory `loss_weight`); None = policy."""

    role: str
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    train: bool | None = None

    def to_template(self) -> dict[str, Any]:
        """The message as a Hugging Face chat template sees it (absent keys, never None values)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            # transformers passes reasoning under all the names templates read.
            out["reasoning_content"] = self.reasoning
            out["thinking"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = [call.to_template() for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(slots=True)
class Conversation:
    messages: list[Message]
    source: SourceRef
    tools: list[dict[str, Any]] | None = None
    kind: Literal["chat"] = "chat"
    # Variables for the chat template from the record itself (`chat_template_kwargs`: `enable_thinking` for
    # Qwen3, `reasoning_effort` for gpt-oss, ...), over the job's `template_kwargs`.
    template_kwargs: dict[str, Any] | None = None


@dataclass(slots=True)
class PromptCompletion:
    """Raw-text prompt/completion (TRL's non-conversational format): no chat template, loss on the completion."""

    prompt: str
    completion: str
    source: SourceRef
    kind: Literal["prompt_completion"] = "prompt_completion"


@dataclass(slots=True)
class TextDocument:
    """Pretraining text: every token is a target."""

    text: str
    source: SourceRef
    kind: Literal["text"] = "text"


Record = Conversation | PromptCompletion | TextDocument


@dataclass(slots=True)
class PreferencePair:
    """One prompt answered twice, the `chosen` answer preferred to the `rejected` one (DPO's data).

    Either all text (`prompt`, `chosen` and `rejected` strings: raw text, no chat template, like
    `PromptCompletion`) or all messages (the prompt's messages, then each side's completion messages, which
    begin with an assistant message). The prompt is kept once, so the renderer can make it the same tokens on
    both sides; `pipeline.formats.preference` has split it off already when the data wrote each side whole.
    """

    prompt: list[Message] | str
    chosen: list[Message] | str
    rejected: list[Message] | str
    source: SourceRef
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] | None = None
    kind: Literal["preference"] = "preference"

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(slots=True)
class PreferenceExample:
    """One answer judged on its own, desirable (`label` True) or not (KTO's unpaired data).

    `record` is what an SFT job would read (a `Conversation` whose prompt messages never train, or a raw-text
    `PromptCompletion`); the judged answer is its final assistant message (or its completion).
    """

    record: Conversation | PromptCompletion
    label: bool
    source: SourceRef
    kind: Literal["kto"] = "kto"


PreferenceRecord = PreferencePair | PreferenceExample


@dataclass(slots=True)
class RawRecord:
    """A record as read from a file, before parsing: a decoded JSON value, or the reason it could not be read.

    A JSONL record first holds its undecoded `line`; `pipeline.read.decode` turns it into `value` (or `error`).
    """

    source: SourceRef
    value: Any = None
    line: bytes | None = None
    error: str | None = None  # a reason code from `schemas.reasons` when the record could not be decoded
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, ...]:
        # What the main process sends its workers, record by record: pickled by its fields (see SourceRef's).
        return (RawRecord, (self.source, self.value, self.line, self.error, self.detail, self.extra))
