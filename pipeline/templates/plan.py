"""Where every character of a rendering comes from, worked out once per conversation shape.

A plan renders the conversation with sentinels in place of message text (see `sentinels`) and labels each
character of that skeleton: which message it belongs to, its `TokenClass`, and whether it trains. A real
conversation of the same shape is then mapped by substituting its text into the sentinel slots, and the
result is compared with the real rendering (see `render.py`): equal means every span is exact.

For each assistant turn the plan finds:
- where the model starts generating: the end of `render(messages[:i], add_generation_prompt=True)` when that
  is a prefix of the rendering (otherwise the common prefix, and the turn is flagged GEN_PROMPT_MISMATCH);
- where the turn ends: the first end-of-turn marker learned by the probe (or, for turns whose marker differs,
  such as a gpt-oss tool call ending in `<|call|>`, the last control token the turn shares with the rendering
  in which it is the final message);
- whether it is faithful: rendered as it would be if it were the last turn, i.e. as the model generates it at
  inference. Qwen3 (drops old <think> blocks) and gpt-oss (`<|end|>` vs `<|return|>`) are not.
Everything the model generates between those points (content, reasoning, tool calls, end-of-turn) trains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...schemas.classes import ROLE_CONTENT_CLASS, TokenClass
from ...schemas.shards import RowFlag
from ..errors import RecordError
from . import ChatTemplate
from .probe import TemplateProfile
from .sentinels import CONTENT, REASONING, Occurrence, find_occurrences

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


@dataclass
class TurnInfo:
    message: int
    trained: bool
    start: int  # where the model starts generating (skeleton coordinates)
    end: int  # end of the end-of-turn marker, or of the turn's text when there is none
    context_faithful: bool
    target_faithful: bool
    has_end_of_turn: bool


@dataclass
class Plan:
    skeleton: str
    occurrences: list[Occurrence]
    spans: list[PlanSpan]
    turns: list[TurnInfo]
    trained_ranges: list[tuple[int, int]]  # skeleton coordinates, one per trained turn or trained message
    flags: int = 0
    # What the template left out: (message index or -1, "text" | "tool calls" | "tool definitions").
    dropped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def unfaithful(self) -> list[int]:
        return [t.message for t in self.turns if t.trained and not t.target_faithful]


@dataclass(frozen=True)
class MaskRules:
    """Which characters train, given which messages should (decided by the mask policy upstream)."""

    train_all: bool = False  # --mask all: every token is a target
    train_end_of_turn: bool = True
    train_reasoning: bool = True
    use_generation_tags: bool = True


class PlanBuilder:
    """Builds plans for one template + tokenizer; holds the regexes the analysis needs."""

    def __init__(
        self,
        template: ChatTemplate,
        profile: TemplateProfile,
        control_re: re.Pattern[str] | None,
        bos_token: str | None,
        rules: MaskRules,
    ):
        self.template = template
        self.profile = profile
        self.control_re = control_re
        self.bos_token = bos_token
        self.rules = rules
        self.eot_re = _alternation(profile.eot_markers)
        self.footer_re = _alternation(profile.footer_markers)

    def build(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, intent: list[bool]) -> Plan:
        """`messages` hold sentinels; `intent[i]` says whether message i should train."""
        use_tags = self.rules.use_generation_tags and self.template.has_generation_tags
        if use_tags:
            skeleton, generation_spans = self.template.render_tracked(messages, tools=tools)
        else:
            skeleton, generation_spans = self.template.render(messages, tools=tools), []
        occurrences, stray = find_occurrences(skeleton)
        if stray:
            raise RecordError(
                "template_content_dependent",
                f"{self.template.name} cuts or rewrites message text (a sentinel was split), so spans cannot be mapped",
            )
        n = len(skeleton)
        cls = [int(TokenClass.TEMPLATE)] * n
        train = [False] * n
        owner = [-1] * n
        occ_of = [-1] * n

        first: dict[int, int] = {}
        data_end: dict[int, int] = {}
        primary: set[int] = set()
        seen: set[tuple[int, str]] = set()
        for k, occ in enumerate(occurrences):
            role = messages[occ.message]["role"]
            klass = TokenClass.REASONING if occ.kind == REASONING else ROLE_CONTENT_CLASS.get(role, TokenClass.USER)
            for p in range(occ.start, occ.end):
                cls[p], owner[p], occ_of[p] = int(klass), occ.message, k
            if (occ.message, occ.kind) not in seen:
                seen.add((occ.message, occ.kind))
                primary.add(k)
                first[occ.message] = min(first.get(occ.message, occ.start), occ.start)
                data_end[occ.message] = max(data_end.get(occ.message, occ.end), occ.end)

        dropped = [
            (i, "text") for i, m in enumerate(messages) if _has_text(m.get("content")) and (i, CONTENT) not in seen
        ]
        if tools and not any(name in skeleton for name in _tool_names(tools)):
            dropped.append((-1, "tool definitions"))
        flags = 0
        turns: list[TurnInfo] = []
        trained_ranges: list[tuple[int, int]] = []
        previous_end = 0
        for i, message in enumerate(messages):
            next_first = min((first[j] for j in range(i + 1, len(messages)) if j in first), default=n)
            if message["role"] == "assistant" and (i in first or message.get("tool_calls")):
                turn = self._assistant_turn(
                    messages, tools, skeleton, i, previous_end, first.get(i), data_end.get(i), next_first, intent[i]
                )
                turns.append(turn)
                self._label_gap(skeleton, previous_end, turn.start, cls, owner, i, is_first=previous_end == 0)
                self._label_turn(skeleton, message, turn, first.get(i), data_end.get(i), cls, train, owner, occ_of)
                if turn.trained:
                    if any(name not in skeleton[turn.start : turn.end] for name in _tool_call_names(message)):
                        dropped.append((i, "tool calls"))
                    if use_tags:
                        trained_ranges.extend(
                            self._apply_generation_spans(generation_spans, turn, next_first, train, occ_of, primary)
                        )
                    else:
                        trained_ranges.append((turn.start, turn.end))
                    if not turn.context_faithful:
                        flags |= RowFlag.GEN_PROMPT_MISMATCH
                    if not turn.has_end_of_turn:
                        flags |= RowFlag.NO_END_OF_TURN
                previous_end = max(previous_end, turn.end)
            elif i in first:
                self._label_gap(skeleton, previous_end, first[i], cls, owner, i, is_first=previous_end == 0)
                if intent[i]:
                    for k, occ in enumerate(occurrences):
                        if occ.message == i and k in primary:
                            for p in range(occ.start, occ.end):
                                train[p] = True
                            trained_ranges.append((occ.start, occ.end))
                previous_end = max(previous_end, data_end[i])
        if use_tags:
            flags |= RowFlag.GENERATION_TAGS
        if self.rules.train_all:
            train = [True] * n
            trained_ranges = [(0, n)] if n else []
        for k, occ in enumerate(occurrences):
            if self.rules.train_all:
                break
            # Duplicated text trains only where the model generates it; message text trains whole or not at all.
            whole = k in primary and any(train[occ.start : occ.end])
            for p in range(occ.start, occ.end):
                train[p] = whole
        spans = _run_lengths(cls, train, owner, occ_of)
        return Plan(skeleton, occurrences, spans, turns, trained_ranges, flags, sorted(set(dropped)))

    def _assistant_turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        skeleton: str,
        i: int,
        previous_end: int,
        first: int | None,
        data_end: int | None,
        next_first: int,
        trained: bool,
    ) -> TurnInfo:
        upper = first if first is not None else next_first
        context_faithful = True
        start = upper
        if i > 0:
            try:
                prompt = self.template.render(messages[:i], add_generation_prompt=True, tools=tools)
            except RecordError:
                prompt = None
            if prompt is not None:
                if skeleton.startswith(prompt):
                    start = len(prompt)
                else:
                    context_faithful = False
                    start = _common_prefix(prompt, skeleton)
                    # The prompt differs earlier (history rewritten, a system prompt moved into the last user
                    # turn) but may still end exactly like the text before this turn: the turn starts there,
                    # never inside the prompt's own text (Mistral's [/INST] must not train).
                    aligned = _aligned_prompt_end(prompt, skeleton, previous_end, upper)
                    if aligned is not None:
                        start = max(start, aligned)
        start = min(max(start, previous_end), upper)
        text_end = data_end if data_end is not None else start
        rendered_as_last: str | None = None
        if i < len(messages) - 1:
            try:
                rendered_as_last = self.template.render(messages[: i + 1], tools=tools)
            except RecordError:
                rendered_as_last = None
        eot = self._find_end_of_turn(skeleton, text_end, next_first, rendered_as_last)
        end = eot[1] if eot else text_end
        if i == len(messages) - 1:
            target_faithful = True
        elif rendered_as_last is None:
            target_faithful = False
        else:
            # Faithful = the turn as generated at inference (rendered last, through its own end-of-turn marker)
            # is exactly what this rendering holds.
            target_faithful = skeleton.startswith(rendered_as_last[: self._generated_end(rendered_as_last, i)])
        return TurnInfo(i, trained, start, end, context_faithful, target_faithful, eot is not None)

    def _generated_end(self, rendered: str, message: int) -> int:
        """End of the final assistant turn (message) in a rendering where it is the last message."""
        occurrences, _ = find_occurrences(rendered)
        text_end = max((o.end for o in occurrences if o.message == message), default=len(rendered))
        eot = self._find_end_of_turn(rendered, text_end, len(rendered), None)
        return eot[1] if eot else text_end

    def _find_end_of_turn(
        self, skeleton: str, text_end: int, window_end: int, rendered_as_last: str | None
    ) -> tuple[int, int] | None:
        if self.eot_re is not None:
            match = self.eot_re.search(skeleton, text_end, window_end)
            if match:
                return match.span()
        if self.control_re is None:
            return None
        if self.profile.stops_at_next_header and rendered_as_last is not None and skeleton.startswith(rendered_as_last):
            match = self.control_re.match(skeleton, len(rendered_as_last))
            if match and match.start() >= text_end:
                return match.span()
        shared = len(skeleton) if rendered_as_last is None else _common_prefix(rendered_as_last, skeleton)
        limit = min(shared, window_end)
        found = None
        for match in self.control_re.finditer(skeleton, text_end, limit):
            found = match.span()
        return found

    def _label_gap(
        self, skeleton: str, start: int, end: int, cls: list[int], owner: list[int], message: int, is_first: bool
    ) -> None:
        """Template text before a message: its header is what follows the last closing marker of the gap
        (`<|im_start|>user\n` after `...<|im_end|>\n`); the rest (footers, default system prompts, tool
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
        for p in range(start + cut, end):
            cls[p] = int(TokenClass.ROLE_HEADER)
            owner[p] = message

    def _label_turn(
        self,
        skeleton: str,
        message: dict[str, Any],
        turn: TurnInfo,
        first: int | None,
        data_end: int | None,
        cls: list[int],
        train: list[bool],
        owner: list[int],
        occ_of: list[int],
    ) -> None:
        """Class and train flag for every character the model generates in this turn."""
        has_reasoning = bool(message.get("reasoning_content"))
        has_calls = bool(message.get("tool_calls"))
        text_start = first if first is not None else turn.start
        text_end = data_end if data_end is not None else turn.start
        eot_start = turn.end
        if turn.has_end_of_turn:
            eot_start = self._eot_start(skeleton, text_end, turn.end)
        before = skeleton[turn.start : text_start]
        lead_class = TokenClass.REASONING if (has_reasoning or _THINK.search(before)) else TokenClass.ASSISTANT_MARKUP
        tail = skeleton[text_end:eot_start]
        for p in range(turn.start, turn.end):
            if occ_of[p] < 0:
                if p < text_start:
                    klass = lead_class
                elif p < text_end:
                    klass = TokenClass.REASONING if has_reasoning else TokenClass.ASSISTANT_MARKUP
                elif p < eot_start:
                    if has_calls:
                        klass = TokenClass.TOOL_CALL
                    else:
                        klass = TokenClass.END_OF_TURN if not tail.strip() else TokenClass.ASSISTANT_MARKUP
                else:
                    klass = TokenClass.END_OF_TURN
                cls[p] = int(klass)
                owner[p] = turn.message
            if turn.trained:
                klass = TokenClass(cls[p])
                train[p] = not (
                    (klass == TokenClass.REASONING and not self.rules.train_reasoning)
                    or (klass == TokenClass.END_OF_TURN and not self.rules.train_end_of_turn)
                )

    def _eot_start(self, skeleton: str, text_end: int, end: int) -> int:
        """The end-of-turn span starts at the marker, or at the whitespace right before it."""
        if self.control_re is None:
            return end
        start = end
        for match in self.control_re.finditer(skeleton, text_end, end):
            if match.end() == end:
                start = match.start()
        while start > text_end and skeleton[start - 1] in " \t\r\n":
            start -= 1
        return start

    def _apply_generation_spans(
        self,
        spans: list[tuple[int, int]],
        turn: TurnInfo,
        window_end: int,
        train: list[bool],
        occ_of: list[int],
        primary: set[int],
    ) -> list[tuple[int, int]]:
        """With {% generation %} blocks the template says what trains: exactly those characters of the turn."""
        for p in range(turn.start, turn.end):
            if occ_of[p] < 0 or occ_of[p] in primary:
                train[p] = False
        ranges = []
        for a, b in spans:
            if a < window_end and b > turn.start and b > a:
                for p in range(a, b):
                    train[p] = True
                ranges.append((a, b))
        return ranges


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


def _has_text(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content)
    if isinstance(content, list):
        return any(isinstance(p, dict) and p.get("text") for p in content)
    return False


def _tool_names(tools: list[dict[str, Any]]) -> list[str]:
    names = []
    for tool in tools:
        function = tool.get("function", tool)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _tool_call_names(message: dict[str, Any]) -> list[str]:
    return [call["function"]["name"] for call in message.get("tool_calls") or []]


def _run_lengths(cls: list[int], train: list[bool], owner: list[int], occ_of: list[int]) -> list[PlanSpan]:
    spans: list[PlanSpan] = []
    n = len(cls)
    start = 0
    for p in range(1, n + 1):
        if p == n or (cls[p], train[p], owner[p], occ_of[p]) != (cls[start], train[start], owner[start], occ_of[start]):
            spans.append(PlanSpan(start, p, cls[start], train[start], owner[start], occ_of[start]))
            start = p
    return spans
