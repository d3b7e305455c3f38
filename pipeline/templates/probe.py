"""What lossmask learns about a chat template once, before any data: probing it with sentinel conversations.

- content format: does it render string content, or does it need a list of text parts (LLaVA, Idefics)?
- reasoning: does it render `reasoning_content`? If not, reasoning is written into the content in <think> tags.
- stop sequences: the template text that ends an assistant turn, from the end of its content through the first
  token the model must emit to stop (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`, gpt-oss `<|return|>`,
  Cohere2 `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`). Found by rendering a final assistant turn and reading the
  control tokens after its content up to the first that stops generation: a stop token of the tokenizer (its EOS,
  the stop ids of `generation_config.json`) or a token that also closes user turns. Never assumed from eos_token
  alone: Gemma's turns end with `<end_of_turn>`, which is not its EOS, and Cohere2's EOS is the second token.
- footer markers: the control tokens that close other roles' turns, used to tell footers from headers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ...errors import RecordError, SetupError
from . import ChatTemplate
from .sentinels import CONTENT, REASONING, find_occurrences, sentinel

_ROLES = ("user", "assistant", "user", "assistant")


@dataclass(frozen=True)
class TemplateProfile:
    content_format: str  # "string" or "parts"
    renders_reasoning: bool
    eot_markers: tuple[str, ...]  # the tokens that end an assistant turn (the last token of a stop sequence)
    footer_markers: tuple[str, ...]
    stops_at_next_header: bool = False  # nothing ends a final turn; the model stops by writing the next header
    requires_tools: bool = False  # renders only when `tools` is given (Hermes / Command-R tool_use templates)
    stop_sequences: tuple[str, ...] = ()  # what ends a turn, e.g. `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`
    # Marker-like strings the template writes around an answer that are no token of the tokenizer (ChatML's
    # `<|im_end|>` with a Mistral tokenizer): the model would see them as plain-text pieces.
    text_markers: tuple[str, ...] = ()
    tool_arguments: str = "either"  # the type of tool-call arguments it takes: "either", "object" or "string"


def to_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content turned into `[{"type": "text", "text": ...}]` (for multimodal templates)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": [{"type": "text", "text": content}] if content else []}
        out.append(message)
    return out


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "probe", "parameters": {}}}


# A rendering out of its budget on the probe's small conversations is the template's fault, not a record's.
_BUDGET_REASONS = frozenset({"template_timeout", "template_output_too_large"})


def _reraise_budget(exc: RecordError) -> None:
    """A probe that may fail (tools, a generation prompt, reasoning) may not run out of budget."""
    if exc.reason in _BUDGET_REASONS:
        raise exc


def profile_template(
    template: ChatTemplate, control_re: re.Pattern[str] | None, stop_tokens: tuple[str, ...] = ()
) -> TemplateProfile:
    """Probe the template with sentinel conversations. Raises SetupError when it renders none of them, or when
    any probe rendering runs out of its time or size budget (at once: each try would take the whole timeout).
    `stop_tokens`: the tokens the model stops generating on (see `TokenizerInfo.stop_tokens`)."""
    try:
        return _profile(template, control_re, stop_tokens)
    except RecordError as exc:  # a rendering after the first that the template refuses (or a budget)
        raise SetupError(
            f"chat template {template.name} fails its probe ({exc.reason}): {exc.detail}"
            if exc.reason in _BUDGET_REASONS
            else f"chat template {template.name} fails to render a probe conversation ({exc.reason}): {exc.detail}"
        ) from None


def _profile(
    template: ChatTemplate, control_re: re.Pattern[str] | None, stop_tokens: tuple[str, ...]
) -> TemplateProfile:
    probe = [{"role": role, "content": sentinel(CONTENT, i)} for i, role in enumerate(_ROLES)]
    chosen: tuple[str, list[dict[str, Any]] | None] | None = None
    error = None
    # Tool-use templates (Hermes, Command-R tool_use) iterate `tools` and fail without it, as in transformers;
    # they are still usable for records that have tools, so a dummy tool is tried last.
    for fmt, tools in (("string", None), ("parts", None), ("string", [_PROBE_TOOL]), ("parts", [_PROBE_TOOL])):
        messages = probe if fmt == "string" else to_parts(probe)
        try:
            text = template.render(messages, tools=tools)
        except RecordError as exc:
            if exc.reason in _BUDGET_REASONS:
                raise
            error = error or exc.detail
            continue
        occurrences, _ = find_occurrences(text)
        if {o.message for o in occurrences if o.kind == CONTENT} == set(range(len(probe))):
            chosen = (fmt, tools)
            break
        chosen = chosen or (fmt, tools)
    if chosen is None:
        raise SetupError(f"chat template {template.name} fails to render a plain user/assistant conversation: {error}")
    content_format, tools = chosen

    def render(messages: list[dict[str, Any]]) -> str:
        return template.render(messages if content_format == "string" else to_parts(messages), tools=tools)

    # End-of-turn markers come from renderings where the assistant turn is the last one, as at inference:
    # what follows a non-final turn may be the next message's header (Metharme's <|user|>), not an ending.
    full = render(probe)
    final = render(probe[:2])
    markers = _text_markers(final[_content_end(final, 1) :], control_re)
    try:
        prompt = template.render(probe[:1] if content_format == "string" else to_parts(probe[:1]), tools=tools)
        with_header = template.render(
            probe[:1] if content_format == "string" else to_parts(probe[:1]), add_generation_prompt=True, tools=tools
        )
        markers |= _text_markers(with_header[len(prompt) :] if with_header.startswith(prompt) else "", control_re)
    except RecordError as exc:
        _reraise_budget(exc)
        pass
    footers = _markers_after(full, {0, 2}, control_re)
    eot: set[str] = set()
    sequences: set[str] = set()
    for last in (1, 3):
        found = _stop_sequence(render(probe[: last + 1]), last, control_re, set(stop_tokens) | footers)
        if found is not None:
            sequences.add(found[0])
            eot.add(found[1])
    # A non-final turn's marker counts too when the same token closes user turns: a closing token, like
    # gpt-oss's <|end|> (its final turns end with <|return|>), not the next message's header.
    eot |= _markers_after(full, {1}, control_re) & footers
    # GLM-4.5 writes nothing after a final assistant turn: its models stop by generating the next message's
    # header (<|user|>, <|observation|>), so that token, where it follows a turn, is the turn's end.
    stops_at_next_header = not eot
    if stops_at_next_header:
        eot = _markers_after(full, {1}, control_re)
    else:
        call_stop = _tool_call_stop(template, content_format, control_re)
        if call_stop is not None:
            eot.add(call_stop)
    renders_reasoning = _renders_reasoning(template, content_format, tools)
    return TemplateProfile(
        content_format,
        renders_reasoning,
        tuple(sorted(eot)),
        tuple(sorted(footers | eot)),
        stops_at_next_header=stops_at_next_header and bool(eot),
        requires_tools=tools is not None,
        stop_sequences=tuple(sorted(sequences)),
        text_markers=tuple(sorted(markers)),
        tool_arguments=_tool_arguments(template, content_format),
    )


_PROBE_ARGUMENTS = {"probe_argument": "probe_value"}


def _render_tool_call(template: ChatTemplate, content_format: str, arguments: dict[str, Any] | str) -> str | None:
    """A conversation that ends with an assistant tool call with these arguments, rendered; None when it fails."""
    call = {"type": "function", "function": {"name": "probe", "arguments": arguments}}
    messages = [
        {"role": "user", "content": sentinel(CONTENT, 0)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    try:
        return template.render(messages if content_format == "string" else to_parts(messages), tools=[_PROBE_TOOL])
    except RecordError as exc:
        _reraise_budget(exc)
        return None


def _tool_call_stop(template: ChatTemplate, content_format: str, control_re: re.Pattern[str] | None) -> str | None:
    """The token that ends a final tool-call turn, when it is not an answer's (gpt-oss `<|call|>`): the last of
    the control tokens the template writes after the call's arguments."""
    text = _render_tool_call(template, content_format, _PROBE_ARGUMENTS)
    if text is None or control_re is None or "probe_value" not in text:
        return None
    tail = text[text.rindex("probe_value") :]
    tokens = [m.group(0) for m in control_re.finditer(tail)]
    return tokens[-1] if tokens and not tail[tail.rindex(tokens[-1]) + len(tokens[-1]) :].strip() else None


def _tool_arguments(template: ChatTemplate, content_format: str) -> str:
    """Which type of tool-call arguments the template renders as the JSON they are: "either", "object" (it
    quotes a string, or reads the object's items) or "string" (it concatenates them)."""

    def renders(arguments: dict[str, Any] | str) -> bool:
        text = _render_tool_call(template, content_format, arguments)
        return text is not None and "probe_value" in text and '\\"probe_value' not in text

    takes_object, takes_string = renders(_PROBE_ARGUMENTS), renders(json.dumps(_PROBE_ARGUMENTS))
    if takes_object and not takes_string:
        return "object"
    if takes_string and not takes_object:
        return "string"
    return "either"


# What a turn marker looks like: <|x|>, <｜x｜>, <x>, </x>, <|x>, <x|>, [INST], [/INST].
MARKER_SHAPE = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|<｜[^｜]{1,40}｜>|<\|?/?[A-Za-z_][A-Za-z0-9_:.\-]{0,30}\|?>|\[/?[A-Z_]{2,20}\]"
)


def _text_markers(text: str, control_re: re.Pattern[str] | None) -> set[str]:
    """Marker-shaped strings in `text` that are not control tokens of the tokenizer."""
    controls = {m.span() for m in control_re.finditer(text)} if control_re is not None else set()
    covered = [range(a, b) for a, b in controls]
    return {m.group(0) for m in MARKER_SHAPE.finditer(text) if not any(m.start() in span for span in covered)}


def _content_end(rendered: str, message: int) -> int:
    ends = [o.end for o in find_occurrences(rendered)[0] if o.message == message and o.kind == CONTENT]
    return ends[0] if ends else len(rendered)


def _stop_sequence(
    rendered: str, message: int, control_re: re.Pattern[str] | None, stops: set[str]
) -> tuple[str, str] | None:
    """(stop sequence, its last token) after the content of the final assistant `message`: the control tokens
    that follow it (whitespace between them allowed) through the first one that stops generation, or through the
    last of them when none does."""
    if control_re is None:
        return None
    ends = [o.end for o in find_occurrences(rendered)[0] if o.message == message and o.kind == CONTENT]
    if not ends:
        return None
    position = ends[0]
    tokens: list[re.Match[str]] = []
    while True:
        while position < len(rendered) and rendered[position] in " \t\r\n":
            position += 1
        match = control_re.match(rendered, position)
        if match is None:
            break
        tokens.append(match)
        position = match.end()
        if match.group(0) in stops:
            break
    if not tokens:
        return None
    return rendered[tokens[0].start() : tokens[-1].end()], tokens[-1].group(0)


def _markers_after(rendered: str, messages: set[int], control_re: re.Pattern[str] | None) -> set[str]:
    markers: set[str] = set()
    if control_re is None:
        return markers
    occurrences, _ = find_occurrences(rendered)
    for occurrence in occurrences:
        if occurrence.message in messages and occurrence.kind == CONTENT:
            position = occurrence.end
            while position < len(rendered) and rendered[position] in " \t\r\n":
                position += 1
            match = control_re.match(rendered, position)
            if match:
                markers.add(match.group(0))
    return markers


def _renders_reasoning(template: ChatTemplate, content_format: str, tools: list[dict[str, Any]] | None) -> bool:
    messages = [
        {"role": "user", "content": sentinel(CONTENT, 0)},
        {
            "role": "assistant",
            "content": sentinel(CONTENT, 1),
            "reasoning_content": sentinel(REASONING, 1),
            "thinking": sentinel(REASONING, 1),
        },
    ]
    if content_format == "parts":
        messages = to_parts(messages)
    try:
        text = template.render(messages, tools=tools)
    except RecordError as exc:
        _reraise_budget(exc)
        return False
    occurrences, _ = find_occurrences(text)
    return any(o.kind == REASONING for o in occurrences)
