"""Where every character of a rendering comes from, worked out once per conversation shape.

A `Layout` renders the conversation with sentinels in place of message text (see `sentinels`) and labels each
character of that skeleton: the message it belongs to, its `TokenClass`, and for message text which occurrence
of that text it is. It decides nothing about training: the mask policy (`pipeline.mask`) reads the labels and
decides which characters train, and `Layout.plan` turns that decision into the `Plan` that `render` fills with
the real text and verifies against the real rendering.

For each assistant turn the layout finds (`Turn`):
- where the model starts generating: the end of `render(messages[:i], add_generation_prompt=True)` when that
  is a prefix of the rendering (otherwise the common prefix, and the turn is flagged GEN_PROMPT_MISMATCH);
- where the turn ends: the first end-of-turn marker learned by the probe (or, for turns whose marker differs,
  such as a gpt-oss tool call ending in `<|call|>`, the last control token the turn shares with the rendering
  in which it is the final message);
- whether it is faithful: rendered as it would be if it were the last turn, i.e. as the model generates it at
  inference. Qwen3 (drops old <think> blocks) and gpt-oss (`<|end|>` vs `<|return|>`) are not.
Everything between those points is labeled as what the model generates: its content, reasoning, tool calls,
the markup of its turn and its end-of-turn marker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import RecordError
from ...schemas.classes import ROLE_CONTENT_CLASS, TokenClass
from ...schemas.shards import RowFlag
from . import ChatTemplate
from .probe import TemplateProfile
from .sentinels import CONTENT, REASONING, Occurrence, find_occurrences, sentinel

_THINK = re.compile(r"</?think>")
_NEWLINES = "\r\n"


@dataclass(frozen=True, slots=True)
class PlanSpan:
    start: int
    end: int
    cls: int
    trainable: bool
    message: int
    occurrence: int  # index into Plan.occurrences when this span is message text, else -1


@dataclass(frozen=True)
class Turn:
    """An assistant turn in the skeleton: what the model generates for message `message`."""

    message: int
    start: int  # where the model starts generating: the end of the generation prompt
    end: int  # end of the end-of-turn marker, or of the turn's text when there is none
    end_of_turn_start: int  # where the stop sequence starts (== end when there is none)
    window_end: int  # where the next message's text starts ({% generation %} blocks before it are this turn's)
    context_faithful: bool  # the text before the turn is the inference prompt (add_generation_prompt=True)
    target_faithful: bool  # the turn is rendered as when it is the last message, as the model generates it
    has_end_of_turn: bool
    calls_rendered: bool  # every tool call's name appears in the turn
    # The turn has reasoning that the template leaves out even where the turn is the last message (DeepSeek-R1
    # cuts every think block): no rendering shows what the model generates, so it trains as a continuation.
    needs_continuation: bool = False


@dataclass(frozen=True)
class TemplateInputs:
    """What a conversation gives its template besides the messages: its tools and its own template variables."""

    tools: list[dict[str, Any]] | None = None
    variables: dict[str, Any] | None = None

    def render(
        self, template: ChatTemplate, messages: list[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        return template.render(
            messages, add_generation_prompt=add_generation_prompt, tools=self.tools, variables=self.variables
        )

    def render_tracked(
        self, template: ChatTemplate, messages: list[dict[str, Any]]
    ) -> tuple[str, list[tuple[int, int]]]:
        return template.render_tracked(messages, tools=self.tools, variables=self.variables)

    def key(self) -> tuple[str | None, str | None]:
        """For caches: equal keys render alike."""
        return (
            json.dumps(self.tools, sort_keys=True) if self.tools else None,
            json.dumps(self.variables, sort_keys=True, default=str) if self.variables else None,
        )


@dataclass
class Labels:
    """One entry per skeleton character."""

    cls: np.ndarray  # uint8 TokenClass
    owner: np.ndarray  # int32: the message it belongs to, -1 for template text outside messages
    occurrence: np.ndarray  # int32: index into the layout's occurrences for message text, else -1

    @classmethod
    def template_text(cls, n: int) -> Labels:
        return cls(
            np.full(n, int(TokenClass.TEMPLATE), dtype=np.uint8),
            np.full(n, -1, dtype=np.int32),
            np.full(n, -1, dtype=np.int32),
        )


@dataclass
class Plan:
    """A layout with its trained characters decided (by `pipeline.mask.plan`)."""

    skeleton: str
    occurrences: list[Occurrence]
    spans: list[PlanSpan]
    trained_ranges: list[tuple[int, int]]  # skeleton coordinates: the runs of trained characters, verified per row
    flags: int = 0
    # What the template left out: (message index or -1, "text" | "tool calls" | "tool definitions").
    dropped: list[tuple[int, str]] = field(default_factory=list)
    continuation: bool = False  # the skeleton is the generation prompt of the earlier messages + the last turn
    open_end: bool = False  # the last message is a trained assistant turn that nothing in the rendering ends


@dataclass
class Layout:
    skeleton: str
    occurrences: list[Occurrence]
    first_occurrence: list[bool]  # per occurrence: the first place its message's text (of its kind) appears
    labels: Labels
    turns: list[Turn]
    placed: list[int]  # messages whose text or turn is in the skeleton, in order
    generation: list[tuple[int, int]] | None  # the {% generation %} blocks, when the template has them
    dropped: list[tuple[int, str]]  # text and tool definitions the template left out
    continuation: bool = False  # see `LayoutBuilder.build_continuation`
    turns_by_message: dict[int, Turn] = field(init=False)

    def __post_init__(self) -> None:
        self.turns_by_message = {turn.message: turn for turn in self.turns}

    def first_occurrences_of(self, message: int) -> list[Occurrence]:
        return [o for k, o in enumerate(self.occurrences) if o.message == message and self.first_occurrence[k]]

    def plan(self, train: np.ndarray, intent: tuple[bool, ...], use_tags: bool) -> Plan:
        """The plan for these trained characters: spans of equal labels, trained runs, and what the row shows."""
        flags = int(RowFlag.GENERATION_TAGS) if use_tags else 0
        dropped = list(self.dropped)
        last = len(intent) - 1
        open_end = False
        for turn in self.turns:
            if not intent[turn.message]:
                continue
            if not turn.calls_rendered:
                dropped.append((turn.message, "tool calls"))
            if not turn.context_faithful:
                flags |= RowFlag.GEN_PROMPT_MISMATCH
            if not turn.has_end_of_turn:
                if turn.message == last:
                    open_end = True  # render decides: append the stop the model must emit, or flag it
                else:
                    flags |= RowFlag.NO_END_OF_TURN
        if self.continuation:
            flags |= RowFlag.REASONING_CONTINUED
        spans = _run_lengths(self.labels, train)
        runs = _trained_runs(train)
        return Plan(
            self.skeleton, self.occurrences, spans, runs, int(flags), sorted(set(dropped)), self.continuation, open_end
        )


@dataclass
class _TextPlaces:
    """Where the messages' text landed in a skeleton."""

    start: dict[int, int]  # message -> first character of its text
    end: dict[int, int]  # message -> end of its text's last character
    kinds: set[tuple[int, str]]  # (message, CONTENT or REASONING) found

    def next_start(self, message: int, default: int) -> int:
        return min((start for j, start in self.start.items() if j > message), default=default)


class LayoutBuilder:
    """Builds layouts for one template + tokenizer; holds the regexes the analysis needs."""

    def __init__(
        self,
        template: ChatTemplate,
        profile: TemplateProfile,
        control_re: re.Pattern[str] | None,
        bos: str | None,
        stop_tokens: tuple[str, ...] = (),
    ):
        self.template = template
        self.profile = profile
        self.control_re = control_re
        self.bos_token = bos
        controls = tuple(t for t in stop_tokens if control_re is not None and control_re.fullmatch(t))
        self.eot_re = _alternation(profile.stop_sequences + profile.eot_markers + controls)
        self.footer_re = _alternation(profile.footer_markers)

    def build(self, messages: list[dict[str, Any]], inputs: TemplateInputs, skeleton: str | None = None) -> Layout:
        """`messages` hold sentinels (see `sentinels`); `skeleton`, when given, is their rendering."""
        generation: list[tuple[int, int]] | None = None
        if skeleton is None:
            skeleton, generation = self._render(messages, inputs)
        occurrences, stray = find_occurrences(skeleton)
        if stray:
            raise RecordError(
                "template_content_dependent",
                f"{self.template.name} cuts or rewrites message text (a sentinel was split), so spans cannot be mapped",
            )
        labels = Labels.template_text(len(skeleton))
        first_occurrence, places = _label_text(messages, occurrences, labels)
        dropped = [
            (i, "text")
            for i, m in enumerate(messages)
            if _holds(m, sentinel(CONTENT, i)) and (i, CONTENT) not in places.kinds
        ]
        turns, placed = self._label_messages(messages, inputs, skeleton, places, labels)
        # The definitions are where the template writes the tools' names outside the turns (a call writes its name).
        outside = "".join(skeleton[a:b] for a, b in _complement([(t.start, t.end) for t in turns], len(skeleton)))
        if inputs.tools and not any(name in outside for name in _tool_names(inputs.tools)):
            dropped.append((-1, "tool definitions"))
        return Layout(skeleton, occurrences, first_occurrence, labels, turns, placed, generation, dropped)

    def build_continuation(self, messages: list[dict[str, Any]], inputs: TemplateInputs) -> Layout:
        """The last message, an assistant turn whose reasoning the template never renders, as the model generates
        it: the template's generation prompt for the earlier messages, then the turn's content as the data holds
        it (its think block and answer) from where that prompt leaves off, then the stop sequence the template
        writes after an answer. DeepSeek-R1's prompt ends `<think>\n`; the model writes the rest of the block.

        Raises `template_drops_reasoning` when the generation prompt does not open the think block: then no
        text the template makes shows where the model writes its reasoning."""
        i = len(messages) - 1
        prompt = inputs.render(self.template, messages[:i], add_generation_prompt=True)
        content = messages[i].get("content") or ""
        before = content.split(sentinel(REASONING, i))[0]  # the think block's opening, as the data writes it
        opened = next((k for k in range(len(before), 0, -1) if prompt.endswith(before[:k])), 0)
        if not before.strip() or before[:opened].rstrip() != before.rstrip():
            raise RecordError(
                "template_drops_reasoning",
                f"{self.template.name} leaves out the reasoning of assistant message {i} even when it is the last "
                "message, and its generation prompt does not open a think block, so no rendering shows where the "
                "model writes its reasoning; use --reasoning-fallback drop to train the answer alone",
            )
        rendered = inputs.render(self.template, messages)
        answer_end = max((o.end for o in find_occurrences(rendered)[0] if o.message == i), default=len(rendered))
        stop = self.eot_re.search(rendered, answer_end) if self.eot_re is not None else None
        stop_text = rendered[answer_end : stop.end()] if stop else ""
        layout = self.build(messages, inputs, skeleton=prompt + content[opened:] + stop_text)
        layout.continuation = True
        return layout

    def _render(
        self, messages: list[dict[str, Any]], inputs: TemplateInputs
    ) -> tuple[str, list[tuple[int, int]] | None]:
        if self.template.has_generation_tags:
            return inputs.render_tracked(self.template, messages)
        return inputs.render(self.template, messages), None

    def _label_messages(
        self,
        messages: list[dict[str, Any]],
        inputs: TemplateInputs,
        skeleton: str,
        places: _TextPlaces,
        labels: Labels,
    ) -> tuple[list[Turn], list[int]]:
        """Each message in order: the header before it, and for an assistant message the turn it generates."""
        turns: list[Turn] = []
        placed: list[int] = []
        previous_end = 0
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and (i in places.start or message.get("tool_calls")):
                turn = self._assistant_turn(messages, inputs, skeleton, i, previous_end, places)
                self._label_header(skeleton, previous_end, turn.start, labels, i, is_first=previous_end == 0)
                self._label_turn(skeleton, message, turn, places, labels)
                turns.append(turn)
                previous_end = max(previous_end, turn.end)
            elif i in places.start:
                self._label_header(skeleton, previous_end, places.start[i], labels, i, is_first=previous_end == 0)
                previous_end = max(previous_end, places.end[i])
            else:
                continue
            placed.append(i)
        return turns, placed

    def _assistant_turn(
        self,
        messages: list[dict[str, Any]],
        inputs: TemplateInputs,
        skeleton: str,
        i: int,
        previous_end: int,
        places: _TextPlaces,
    ) -> Turn:
        text_start = places.start.get(i)
        next_start = places.next_start(i, len(skeleton))
        upper = text_start if text_start is not None else next_start
        start, context_faithful = self._generation_start(messages, inputs, skeleton, i, previous_end, upper)
        text_end = places.end.get(i, start)
        rendered_as_last: str | None = None
        if i < len(messages) - 1:
            try:
                rendered_as_last = inputs.render(self.template, messages[: i + 1])
            except RecordError:
                rendered_as_last = None
        next_role = messages[i + 1]["role"] if i + 1 < len(messages) else None
        # The stop comes after the turn's tool calls too: in gpt-oss, `<|end|>` closes the analysis before a call.
        calls_end = text_end
        for name in _tool_call_names(messages[i]):
            found = skeleton.find(name, calls_end, next_start)
            calls_end = found + len(name) if found >= 0 else calls_end
        eot = self._find_end_of_turn(skeleton, max(text_end, calls_end), next_start, rendered_as_last, next_role)
        end = eot[1] if eot else text_end
        if i == len(messages) - 1:
            target_faithful = True
        elif rendered_as_last is None:
            target_faithful = False
        else:
            # Faithful = the turn as generated at inference (rendered last, through its own end-of-turn marker)
            # is exactly what this rendering holds.
            target_faithful = skeleton.startswith(rendered_as_last[: self._generated_end(rendered_as_last, i)])
        calls_rendered = all(name in skeleton[start:end] for name in _tool_call_names(messages[i]))
        eot_start = eot[0] if eot else end
        as_generated = skeleton if rendered_as_last is None else rendered_as_last
        shown = any(o.message == i and o.kind == REASONING for o in find_occurrences(as_generated)[0])
        needs_continuation = _holds(messages[i], sentinel(REASONING, i)) and not shown
        return Turn(
            i,
            start,
            end,
            eot_start,
            next_start,
            context_faithful,
            target_faithful and not needs_continuation,
            eot is not None,
            calls_rendered,
            needs_continuation,
        )

    def _generation_start(
        self,
        messages: list[dict[str, Any]],
        inputs: TemplateInputs,
        skeleton: str,
        i: int,
        previous_end: int,
        upper: int,
    ) -> tuple[int, bool]:
        """(where the model starts generating message i, whether the text before it is the inference prompt)."""
        start, context_faithful = upper, True
        if i > 0:
            try:
                prompt = inputs.render(self.template, messages[:i], add_generation_prompt=True)
            except RecordError:
                prompt = None
            earlier = messages[:i]
            if prompt is not None:
                if skeleton.startswith(prompt):
                    start = len(prompt)
                else:
                    context_faithful = False
                    start = _common_prefix(prompt, skeleton)
                    # The prompt differs earlier (history rewritten, a system prompt moved into the last user
                    # turn) but may still end exactly like the text before this turn: the turn starts there,
                    # never inside the prompt's own text (Mistral's [/INST] must not train).
                    header = self._generation_header(earlier, inputs, prompt)
                    found = skeleton.find(header, previous_end, upper) if header else -1
                    if found >= 0:  # the header the generation prompt adds (Tulu's `<|assistant|>\n`)
                        start = max(start, found + len(header))
                    else:
                        aligned = _aligned_prompt_end(prompt, skeleton, previous_end, upper)
                        if aligned is not None:
                            start = max(start, aligned)
        start = min(max(start, previous_end), upper)
        if not context_faithful and self.control_re is not None:  # never inside a marker the two texts only begin alike
            for match in self.control_re.finditer(
                skeleton, max(previous_end, start - 64), min(len(skeleton), start + 64)
            ):
                if match.start() < start < match.end():
                    start = max(previous_end, match.start())
        return start, context_faithful

    def _generation_header(self, messages: list[dict[str, Any]], inputs: TemplateInputs, prompt: str) -> str:
        """What `add_generation_prompt=True` adds to the rendering of the earlier messages: the turn's header."""
        try:
            plain = inputs.render(self.template, messages)
        except RecordError:
            return ""
        return prompt[len(plain) :] if prompt.startswith(plain) else ""

    def _generated_end(self, rendered: str, message: int) -> int:
        """End of the final assistant turn (message) in a rendering where it is the last message."""
        occurrences, _ = find_occurrences(rendered)
        text_end = max((o.end for o in occurrences if o.message == message), default=len(rendered))
        eot = self._find_end_of_turn(rendered, text_end, len(rendered), None, None)
        return eot[1] if eot else text_end

    def _find_end_of_turn(
        self, skeleton: str, text_end: int, window_end: int, rendered_as_last: str | None, next_role: str | None
    ) -> tuple[int, int] | None:
        """The stop sequence after a turn's text: the first stop sequence of the probe (or stop token) before the
        next message; for templates whose models stop by writing the next header (GLM), that header, unless the
        next message is the assistant's again (two answers in a row: nothing ended the first)."""
        if self.eot_re is not None:
            match = self.eot_re.search(skeleton, text_end, window_end)
            if match:
                return match.span()
        if self.control_re is None:
            return None
        if self.profile.stops_at_next_header and rendered_as_last is not None and skeleton.startswith(rendered_as_last):
            match = self.control_re.match(skeleton, len(rendered_as_last))
            if match and match.start() >= text_end:
                return match.span() if next_role != "assistant" else None
        shared = len(skeleton) if rendered_as_last is None else _common_prefix(rendered_as_last, skeleton)
        limit = min(shared, window_end)
        found = None
        for match in self.control_re.finditer(skeleton, text_end, limit):
            found = match.span()
        return found

    def _label_header(self, skeleton: str, start: int, end: int, labels: Labels, message: int, is_first: bool) -> None:
        """Template text before a message: its header is what follows the last closing marker of the gap
        (`<|im_start|>user\\n` after `...<|im_end|>\\n`); the rest (footers, default system prompts, tool
        definitions, BOS) stays template text."""
        if end <= start:
            return
        gap = skeleton[start:end]
        cut = len(self.bos_token) if is_first and self.bos_token and gap.startswith(self.bos_token) else 0
        if self.footer_re is not None:
            for match in self.footer_re.finditer(gap):
                cut = max(cut, match.end())
        if cut == 0 and not is_first:
            cut = len(gap) - len(gap.lstrip(" \t" + _NEWLINES))
        while cut < len(gap) and gap[cut] in _NEWLINES:
            cut += 1
        labels.cls[start + cut : end] = int(TokenClass.ROLE_HEADER)
        labels.owner[start + cut : end] = message

    def _label_turn(
        self, skeleton: str, message: dict[str, Any], turn: Turn, places: _TextPlaces, labels: Labels
    ) -> None:
        """The class of every template character the model generates in this turn (its text is labeled already)."""
        has_reasoning = (turn.message, REASONING) in places.kinds
        has_calls = bool(message.get("tool_calls"))
        text_start = places.start.get(turn.message, turn.start)
        text_end = places.end.get(turn.message, turn.start)
        eot_start = _with_space_before(skeleton, text_end, turn.end_of_turn_start)
        before = skeleton[turn.start : text_start]
        lead_class = TokenClass.REASONING if (has_reasoning or _THINK.search(before)) else TokenClass.ASSISTANT_MARKUP
        tail_class = TokenClass.END_OF_TURN if not skeleton[text_end:eot_start].strip() else TokenClass.ASSISTANT_MARKUP
        inner_class = TokenClass.REASONING if has_reasoning else TokenClass.ASSISTANT_MARKUP
        classes = np.empty(turn.end - turn.start, dtype=np.uint8)
        positions = np.arange(turn.start, turn.end)
        classes[:] = int(TokenClass.END_OF_TURN)  # from the end-of-turn marker on
        classes[positions < eot_start] = int(TokenClass.TOOL_CALL if has_calls else tail_class)
        classes[positions < text_end] = int(inner_class)
        classes[positions < text_start] = int(lead_class)
        template_text = labels.occurrence[turn.start : turn.end] < 0
        labels.cls[turn.start : turn.end][template_text] = classes[template_text]
        labels.owner[turn.start : turn.end][template_text] = turn.message


def _label_text(
    messages: list[dict[str, Any]], occurrences: list[Occurrence], labels: Labels
) -> tuple[list[bool], _TextPlaces]:
    """Label every occurrence of message text; (which occurrences come first for their text, where texts are)."""
    places = _TextPlaces({}, {}, set())
    first_occurrence = []
    for k, occurrence in enumerate(occurrences):
        i = occurrence.message
        role = messages[i]["role"]
        klass = TokenClass.REASONING if occurrence.kind == REASONING else ROLE_CONTENT_CLASS.get(role, TokenClass.USER)
        window = slice(occurrence.start, occurrence.end)
        labels.cls[window], labels.owner[window], labels.occurrence[window] = int(klass), i, k
        first = (i, occurrence.kind) not in places.kinds
        first_occurrence.append(first)
        if first:
            places.kinds.add((i, occurrence.kind))
            places.start[i] = min(places.start.get(i, occurrence.start), occurrence.start)
            places.end[i] = max(places.end.get(i, occurrence.end), occurrence.end)
    return first_occurrence, places


def _complement(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The parts of [0, n) outside the sorted, disjoint `ranges`."""
    out, position = [], 0
    for a, b in ranges:
        if a > position:
            out.append((position, a))
        position = max(position, b)
    if position < n:
        out.append((position, n))
    return out


def _holds(value: Any, text: str) -> bool:
    """Whether a message (or any string inside it: content parts, fields) contains `text`."""
    if isinstance(value, str):
        return text in value
    if isinstance(value, dict):
        return any(_holds(v, text) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, text) for v in value)
    return False


def _with_space_before(skeleton: str, lower: int, start: int) -> int:
    """The end-of-turn span starts at its stop sequence, or at the whitespace right before it."""
    while start > lower and skeleton[start - 1] in " \t\r\n":
        start -= 1
    return start


def _alternation(strings: tuple[str, ...]) -> re.Pattern[str] | None:
    if not strings:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


def _aligned_prompt_end(prompt: str, skeleton: str, lower: int, upper: int) -> int | None:
    """The furthest j in (lower, upper] where the template text skeleton[lower:j] is how the prompt ends."""
    for j in range(upper, lower, -1):
        if prompt.endswith(skeleton[lower:j]):
            return j
    return None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _tool_names(tools: list[dict[str, Any]]) -> list[str]:
    names = []
    for tool in tools:
        function = tool.get("function", tool)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _tool_call_names(message: dict[str, Any]) -> list[str]:
    return [call["function"]["name"] for call in message.get("tool_calls") or []]


def _run_lengths(labels: Labels, train: np.ndarray) -> list[PlanSpan]:
    """Maximal runs of characters with the same class, train flag, owner and occurrence."""
    n = train.size
    if n == 0:
        return []
    keys = (labels.cls, train, labels.owner, labels.occurrence)
    changes = np.zeros(n, dtype=bool)
    changes[0] = True
    for key in keys:
        changes[1:] |= key[1:] != key[:-1]
    starts = np.flatnonzero(changes)
    ends = np.append(starts[1:], n)
    return [
        PlanSpan(int(a), int(b), int(labels.cls[a]), bool(train[a]), int(labels.owner[a]), int(labels.occurrence[a]))
        for a, b in zip(starts, ends, strict=True)
    ]


def _trained_runs(train: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of trained characters: each is checked, per row, to decode back to its rendered text."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], train, [False]]).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
