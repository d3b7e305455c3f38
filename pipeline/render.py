"""Stage 3, render: a record -> rendered text whose every character is labeled, verified against the template.

For a conversation, a cached `Layout` (built from a sentinel rendering of the same shape, see `templates.plan`)
says where each message lands, and the mask policy (`mask`) decides which of its characters train, and which
rows the conversation becomes (`--unfaithful-turns`). The real rendering must equal the plan with the real text
substituted, character for character, or the record is rejected. That equality is the proof that the spans,
and so the mask, are exact.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecordError, SetupError
from ..schemas.classes import TokenClass
from ..schemas.examples import CharSpan, RenderedExample
from ..schemas.records import Conversation, PromptCompletion, Record, TextDocument
from ..schemas.shards import RowFlag
from .mask import MaskPolicy, appended_eos_trains, class_trains, message_intent, plan, row_plans
from .reasoning import ReasoningTags
from .template_messages import TemplateMessage, template_messages
from .templates import BUILTIN_NAMES, ChatTemplate
from .templates.plan import Layout, LayoutBuilder, Plan, TemplateInputs
from .templates.probe import TemplateProfile, profile_template, to_parts
from .tokenizer import TokenizerInfo
from .tool_calls import generate_call_ids

DROPPED_POLICIES = ("reject", "keep")
SPECIAL_POLICIES = ("escape", "reject", "allow")
REASONING_FALLBACKS = ("inline", "drop")
TOOL_CALL_IDS = ("keep", "generate")
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class RenderOptions:
    mask: MaskPolicy = field(default_factory=MaskPolicy)
    dropped_messages: str = "reject"
    special_tokens_in_content: str = "escape"
    reasoning_fallback: str = "inline"  # when the template ignores reasoning_content: write it in <think> tags
    reasoning_tags: ReasoningTags | None = None  # None: the template's own (see `reasoning`)
    allow_text_markers: bool = False  # a template whose turn markers are no tokens of the tokenizer
    tool_call_ids: str = "keep"  # "generate": deterministic ids where the template's rule needs them
    text_append_eos: bool = True


class Renderer:
    def __init__(self, template: ChatTemplate | None, tokenizer: TokenizerInfo, options: RenderOptions):
        self.template = template
        self.tokenizer = tokenizer
        self.options = options
        self.profile: TemplateProfile | None = None
        self.builder: LayoutBuilder | None = None
        if template is not None:
            stops = tokenizer.stop_tokens
            markers = tokenizer.control_re
            self.profile = profile_template(template, markers, stops)
            if self.profile.text_markers:
                found = ", ".join(self.profile.text_markers)
                if not options.allow_text_markers:
                    raise SetupError(
                        f"chat template {template.name} writes {found}, which the tokenizer {tokenizer.path} has no "
                        "token for: the model would never learn its turn markers as tokens (its stop token "
                        "included); use the model's own template, or pass --allow-text-markers to train them as text"
                    )
                # Allowed: the markers structure the rendering like control tokens, and train as plain text.
                texts = "|".join(re.escape(m) for m in sorted(self.profile.text_markers, key=len, reverse=True))
                markers = re.compile(f"{markers.pattern}|{texts}" if markers is not None else texts)
                self.profile = profile_template(template, markers, stops)
            bos = tokenizer.special_tokens.get("bos_token")
            self.builder = LayoutBuilder(template, self.profile, markers, bos, stops)
        self.reasoning_tags = options.reasoning_tags or ReasoningTags.for_template(template and template.source)
        self._layouts: OrderedDict[Any, Layout] = OrderedDict()
        self._plans: OrderedDict[Any, Plan] = OrderedDict()

    def render(self, record: Record, inherited: list[bool] | None = None) -> list[RenderedExample]:
        """The rows of a record. `inherited`: the training decision of each message, for a conversation shortened
        to fit (see `mask.message_intent`)."""
        if isinstance(record, TextDocument):
            return [self._render_text(record)]
        if isinstance(record, PromptCompletion):
            return [self._render_prompt_completion(record)]
        return self._render_chat(record, inherited)

    # plain text and raw prompt/completion: no template, the spans are known directly

    def _render_text(self, record: TextDocument) -> RenderedExample:
        n = len(record.text)
        flags, escape = self._check_special(record.text)
        (trains,) = message_intent(record, self.options.mask)
        return RenderedExample(
            text=record.text,
            spans=[CharSpan(0, n, int(TokenClass.TEXT), class_trains(self.options.mask, TokenClass.TEXT, trains))],
            source=record.source,
            data_spans=[(0, n)],
            flags=flags,
            add_special_tokens=True,
            append_eos=self.options.text_append_eos,
            eos_trains=appended_eos_trains(self.options.mask, TokenClass.TEXT),
            escape=escape,
        )

    def _render_prompt_completion(self, record: PromptCompletion) -> RenderedExample:
        text = record.prompt + record.completion
        p, n = len(record.prompt), len(text)
        flags, escape = self._check_special(text)
        policy = self.options.mask
        prompt_trains, completion_trains = message_intent(record, policy)
        return RenderedExample(
            text=text,
            spans=[
                CharSpan(0, p, int(TokenClass.USER), class_trains(policy, TokenClass.USER, prompt_trains), 0),
                CharSpan(
                    p, n, int(TokenClass.ASSISTANT), class_trains(policy, TokenClass.ASSISTANT, completion_trains), 1
                ),
            ],
            source=record.source,
            data_spans=[(0, n)],
            turns=[(p, n)],
            flags=flags,
            add_special_tokens=True,
            append_eos=True,
            eos_trains=appended_eos_trains(policy, TokenClass.END_OF_TURN),
            escape=escape,
        )

    def _check_special(self, *texts: str) -> tuple[int, bool]:
        """(flags, escape) for message text holding control-token strings, per --special-tokens-in-content."""
        found = [token for text in texts for token in self.tokenizer.find_control_tokens(text)]
        if not found:
            return 0, False
        policy = self.options.special_tokens_in_content
        if policy == "reject":
            raise RecordError("special_token_in_content", f"found {sorted(set(found))[:5]}")
        if policy == "allow":
            return int(RowFlag.SPECIAL_ALLOWED), False
        if not self.tokenizer.escape_supported:
            raise RecordError(
                "special_token_in_content",
                f"found {sorted(set(found))[:5]}; this tokenizer cannot encode them as plain text exactly",
            )
        return 0, True

    # conversations

    def generation_prompt(self, conversation: Conversation, count: int) -> str:
        """What the model reads at inference before it writes message `count` of the conversation: its first
        `count` messages, exactly as `render` hands them to the template, rendered with the generation prompt (so
        the assistant's header ends it). A preference pair's prompt is this text (`pairs`)."""
        conversation, messages = self._template_messages(conversation)
        assert self.template is not None and self.profile is not None
        data = [m.data for m in messages[:count]]
        if self.profile.content_format == "parts":
            data = to_parts(data)
        inputs = TemplateInputs(conversation.tools, conversation.template_kwargs)
        return inputs.render(self.template, data, add_generation_prompt=True)

    def _template_messages(self, conversation: Conversation) -> tuple[Conversation, list[TemplateMessage]]:
        """The conversation as its rows render it (generated tool-call ids, if asked), and its messages as the
        template receives them."""
        if self.template is None or self.builder is None or self.profile is None:
            # A job setting, not this record's fault: every chat record would be rejected the same way.
            raise SetupError(
                f"{conversation.source} is chat data and the tokenizer has no chat template; pass --chat-template "
                f"with a .jinja file or one of: {', '.join(BUILTIN_NAMES)}"
            )
        if self.profile.requires_tools and not conversation.tools:
            raise RecordError("template_error", f"{self.template.name} renders only conversations that have `tools`")
        if self.options.tool_call_ids == "generate" and any(m.tool_calls for m in conversation.messages):
            conversation = generate_call_ids(conversation)
        inline = self.options.reasoning_fallback == "inline"
        messages = template_messages(
            conversation.messages,
            self.profile.renders_reasoning,
            self.reasoning_tags,
            inline,
            self.profile.tool_arguments,
        )
        return conversation, messages

    def _render_chat(self, conversation: Conversation, inherited: list[bool] | None) -> list[RenderedExample]:
        policy = self.options.mask
        conversation, messages = self._template_messages(conversation)
        assert self.template is not None and self.profile is not None
        intent = message_intent(conversation, policy, inherited)
        flags, escape = self._check_special(*(text for m in messages for text in (m.answer, m.reasoning)))
        if any(m.converted for m in messages):
            flags |= RowFlag.TOOL_ARGUMENTS_CONVERTED
        if conversation.tools or any(m.tool_calls for m in conversation.messages):
            calls = [[c.to_template() for c in m.tool_calls or []] for m in conversation.messages]
            found = self.tokenizer.find_control_tokens(json.dumps([conversation.tools, calls], ensure_ascii=False))
            if found and not flags & RowFlag.SPECIAL_ALLOWED:
                raise RecordError("special_token_in_tool_data", f"found {sorted(set(found))[:5]}")

        inputs = TemplateInputs(conversation.tools, conversation.template_kwargs)
        layout = self._layout(messages, inputs)
        rows = row_plans(layout, intent, policy, self.template.name)
        # An assistant message with nothing to say: its end-of-turn alone would teach the model to answer with
        # nothing (whitespace-only content trains exactly that). The audit reports rows that hold one.
        blank = [
            i
            for i, m in enumerate(conversation.messages)
            if m.role == "assistant" and not m.content.strip() and not m.tool_calls
        ]
        examples = []
        for part, row in enumerate(rows):
            row_plan = self._plan(messages[: row.messages], inputs, row.intent, row.continuation)
            row_flags = row.flags
            if blank and blank[0] < row.messages:
                row_flags |= RowFlag.EMPTY_ASSISTANT
            if row_plan.dropped:
                if self.options.dropped_messages == "reject":
                    what = "; ".join(
                        f"the {lost} of message {i} ({conversation.messages[i].role})" if i >= 0 else f"the {lost}"
                        for i, lost in row_plan.dropped
                    )
                    hint = (
                        " (use a template that renders tools)" if any("tool" in p for _, p in row_plan.dropped) else ""
                    )
                    raise RecordError("template_dropped_message", f"{self.template.name} leaves out {what}{hint}")
                row_flags |= RowFlag.MESSAGE_DROPPED
            example = self._realize(row_plan, messages[: row.messages], inputs, conversation, part)
            if row_plan.open_end:
                example.append_stop = self._stop_after(layout, row.messages - 1)
                row_flags |= RowFlag.STOP_APPENDED if example.append_stop else RowFlag.NO_END_OF_TURN
                example.eos_trains = class_trains(policy, TokenClass.END_OF_TURN, True)
            example.flags |= flags | row_flags | row_plan.flags
            example.escape = escape
            examples.append(example)
        return examples

    def _stop_after(self, layout: Layout, message: int) -> str | None:
        """For templates whose models stop by writing the next message's header (GLM): the header that follows
        this turn in the whole conversation, or, when it ends the conversation, the header of a user turn."""
        if self.profile is None or not self.profile.stops_at_next_header:
            return None
        turn = layout.turns_by_message.get(message)
        if turn is not None and turn.has_end_of_turn:
            return layout.skeleton[turn.end_of_turn_start : turn.end]
        markers = self.profile.eot_markers
        stops = [m for m in markers if m in self.tokenizer.stop_tokens] or list(markers)
        return stops[0] if stops else None

    def _layout(self, messages: list[TemplateMessage], inputs: TemplateInputs, continuation: bool = False) -> Layout:
        """The layout of this conversation shape, built once (a sentinel rendering) and cached."""
        assert self.builder is not None and self.profile is not None
        key = (tuple(m.shape() for m in messages), inputs.key(), continuation)
        layout = _cached(self._layouts, key)
        if layout is None:
            twins = [m.twin(i) for i, m in enumerate(messages)]
            if self.profile.content_format == "parts":
                twins = to_parts(twins)
            build = self.builder.build_continuation if continuation else self.builder.build
            layout = _store(self._layouts, key, build(twins, inputs))
        return layout

    def _plan(
        self,
        messages: list[TemplateMessage],
        inputs: TemplateInputs,
        intent: tuple[bool, ...],
        continuation: bool = False,
    ) -> Plan:
        """The layout with the mask policy applied for this intent, cached likewise."""
        shapes = tuple(m.shape() for m in messages)
        key = (shapes, inputs.key(), intent, continuation)
        cached = _cached(self._plans, key)
        if cached is not None:
            return cached
        return _store(self._plans, key, plan(self._layout(messages, inputs, continuation), intent, self.options.mask))

    def _realize(
        self,
        plan: Plan,
        messages: list[TemplateMessage],
        inputs: TemplateInputs,
        conversation: Conversation,
        part: int,
    ) -> RenderedExample:
        """Substitute the real text into the plan, and check it against the real rendering."""
        assert self.template is not None and self.profile is not None
        data = [m.data for m in messages]
        if self.profile.content_format == "parts":
            data = to_parts(data)
        # A continuation row is the generation prompt of the earlier messages, then the turn as the model writes it.
        real = inputs.render(self.template, data[:-1] if plan.continuation else data, plan.continuation)
        texts = [o.apply(messages[o.message].text(o.kind)) for o in plan.occurrences]
        skeleton = plan.skeleton
        pieces: list[str] = []
        shift_after: list[tuple[int, int]] = []  # (skeleton end of occurrence, cumulative shift)
        position, shift = 0, 0
        for occurrence, text in zip(plan.occurrences, texts, strict=True):
            pieces.append(skeleton[position : occurrence.start])
            pieces.append(text)
            shift += len(text) - (occurrence.end - occurrence.start)
            shift_after.append((occurrence.end, shift))
            position = occurrence.end
        pieces.append(skeleton[position:])
        expected = "".join(pieces)
        if plan.continuation and expected.startswith(real):
            real = expected
        if expected != real:
            at = _first_difference(expected, real)
            raise RecordError(
                "template_content_dependent",
                f"{self.template.name}: rendering differs from the verified plan at char {at}: "
                f"{real[max(0, at - 20) : at + 20]!r} vs {expected[max(0, at - 20) : at + 20]!r}",
            )

        def to_real(pos: int) -> int:
            moved = 0
            for end, cumulative in shift_after:
                if end <= pos:
                    moved = cumulative
                else:
                    break
            return pos + moved

        spans: list[CharSpan] = []
        data_spans: list[tuple[int, int]] = []
        for span in plan.spans:
            start = to_real(span.start)
            if span.occurrence >= 0:
                end = start + len(texts[span.occurrence])
                data_spans.append((start, end))
            else:
                end = to_real(span.end)
            if end > start:
                spans.append(CharSpan(start, end, span.cls, span.trainable, span.message))
        turns = [(to_real(a), to_real(b)) for a, b in plan.trained_ranges]
        return RenderedExample(
            text=real,
            spans=spans,
            source=conversation.source,
            data_spans=data_spans,
            turns=turns,
            part=part,
        )


def _cached(cache: OrderedDict[Any, Any], key: Any) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _store(cache: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
