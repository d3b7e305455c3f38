"""The mask policy (`pipeline.mask`) on its own: each of its four decisions, from plain inputs to plain outputs."""

from __future__ import annotations

import numpy as np
import pytest
from lossmask.errors import RecordError
from lossmask.pipeline.mask import (
    MaskPolicy,
    message_intent,
    row_plans,
    tokens_trained,
    train_characters,
)
from lossmask.pipeline.templates.plan import LayoutBuilder, TemplateInputs
from lossmask.pipeline.templates.probe import profile_template
from lossmask.pipeline.templates.sentinels import CONTENT, sentinel
from lossmask.schemas.classes import TokenClass
from lossmask.schemas.records import Conversation, Message, PromptCompletion, SourceRef, TextDocument
from lossmask.schemas.shards import RowFlag

from ..support import builtin_setup

SOURCE = SourceRef("policy", 1)


def chat(*pairs: tuple[str, str], train: dict[int, bool] | None = None) -> Conversation:
    messages = [Message(role, text) for role, text in pairs]
    for i, flag in (train or {}).items():
        messages[i].train = flag
    return Conversation(messages, SOURCE)


CHAT = chat(("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))


# 1. messages


def test_roles_train_by_default_and_the_datas_flag_wins():
    assert message_intent(CHAT, MaskPolicy()) == [False, False, True, False, True]
    weighted = chat(*[(m.role, m.content) for m in CHAT.messages], train={1: True, 2: False})
    assert message_intent(weighted, MaskPolicy()) == [False, True, False, False, True]
    assert message_intent(CHAT, MaskPolicy(train_roles=("assistant", "system"))) == [True, False, True, False, True]


def test_last_assistant_and_all():
    assert message_intent(CHAT, MaskPolicy(mode="last-assistant")) == [False, False, False, False, True]
    assert message_intent(CHAT, MaskPolicy(mode="all")) == [True] * 5


def test_a_shortened_conversation_keeps_the_whole_conversations_decisions():
    shortened = chat(("user", "Q2"), ("assistant", "A2"), ("assistant", "A3"))
    # Under last-assistant its own last message would train; inherited, only what trained in the whole one does.
    assert message_intent(shortened, MaskPolicy(mode="last-assistant"), inherited=[False, True, False]) == [
        False,
        True,
        False,
    ]
    assert shortened.messages[2].train is None  # the data's field is never written


def test_no_assistant_turn_is_refused_unless_everything_trains():
    only_user = chat(("user", "Q"))
    with pytest.raises(RecordError) as caught:
        message_intent(only_user, MaskPolicy())
    assert caught.value.reason == "no_assistant_turn"
    assert message_intent(only_user, MaskPolicy(mode="all")) == [True]


def test_text_and_raw_prompt_completion():
    assert message_intent(TextDocument("t", SOURCE), MaskPolicy()) == [True]
    assert message_intent(PromptCompletion("p", "c", SOURCE), MaskPolicy()) == [False, True]
    assert message_intent(PromptCompletion("p", "c", SOURCE), MaskPolicy(mode="all")) == [True, True]


def test_trained_classes():
    everything = {int(c) for c in TokenClass}
    assert MaskPolicy().trained_classes() == everything
    assert MaskPolicy(train_end_of_turn=False).trained_classes() == everything - {int(TokenClass.END_OF_TURN)}
    assert MaskPolicy(train_reasoning=False).trained_classes() == everything - {int(TokenClass.REASONING)}
    assert MaskPolicy(mode="all", train_reasoning=False, train_end_of_turn=False).trained_classes() == everything


# 2. rows


class _Turn:
    def __init__(self, message: int, faithful: bool, continuation: bool = False):
        self.message, self.target_faithful, self.needs_continuation = message, faithful, continuation


class _Layout:
    """The only facts `row_plans` reads: which assistant turns are rendered as at inference, and how not."""

    def __init__(self, *turns: _Turn):
        self.turns = list(turns)
        self.turns_by_message = {t.message: t for t in turns}


UNFAITHFUL_FIRST = _Layout(_Turn(2, False), _Turn(4, True))
INTENT = [False, False, True, False, True]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            "split",
            [
                ((3, (False, False, True)), RowFlag.SPLIT_TURN),
                ((5, (False, False, False, False, True)), RowFlag.SPLIT_TURN),
            ],
        ),
        ("faithful-only", [((5, (False, False, False, False, True)), RowFlag.UNFAITHFUL_MASKED)]),
        ("as-rendered", [((5, tuple(INTENT)), RowFlag.UNFAITHFUL_TRAINED)]),
    ],
)
def test_unfaithful_turns(policy, expected):
    rows = row_plans(UNFAITHFUL_FIRST, INTENT, MaskPolicy(unfaithful_turns=policy), "t")  # type: ignore[arg-type]
    assert [((r.messages, r.intent), r.flags) for r in rows] == [(key, int(flag)) for key, flag in expected]


def test_unfaithful_turns_reject_and_untrained_turns_do_not_count():
    with pytest.raises(RecordError) as caught:
        row_plans(UNFAITHFUL_FIRST, INTENT, MaskPolicy(unfaithful_turns="reject"), "t")  # type: ignore[arg-type]
    assert caught.value.reason == "template_unfaithful" and "assistant message 2" in caught.value.detail
    # The unfaithful turn does not train (last-assistant): nothing to split.
    rows = row_plans(UNFAITHFUL_FIRST, [False, False, False, False, True], MaskPolicy(), "t")  # type: ignore[arg-type]
    assert [(r.messages, r.flags) for r in rows] == [(5, 0)]
    # split, with no faithful turn left to train: only the unfaithful turn's own row.
    rows = row_plans(_Layout(_Turn(2, False)), [False, False, True], MaskPolicy(), "t")  # type: ignore[arg-type]
    assert [(r.messages, r.intent) for r in rows] == [(3, (False, False, True))]


# 3. characters, on a real layout (the built-in ChatML template)


def chatml_layout():
    info, template = builtin_setup("chatml")
    builder = LayoutBuilder(template, profile_template(template, info.control_re), info.control_re, None)
    roles = ["user", "assistant", "user", "assistant"]
    messages = [{"role": role, "content": sentinel(CONTENT, i)} for i, role in enumerate(roles)]
    return builder.build(messages, TemplateInputs())


def trained_text(layout, train) -> list[str]:
    """The runs of trained skeleton characters, with the answers' sentinels shown as A1 and A2."""
    runs = layout.plan(train, (False, True, False, True), use_tags=False).trained_ranges
    named = {sentinel(CONTENT, 1): "A1", sentinel(CONTENT, 3): "A2"}
    out = []
    for a, b in runs:
        text = layout.skeleton[a:b]
        for marker, name in named.items():
            text = text.replace(marker, name)
        out.append(text)
    return out


def test_a_trained_turn_is_what_the_model_generates_and_nothing_else():
    layout = chatml_layout()
    intent = (False, True, False, True)
    train = train_characters(layout, intent, MaskPolicy(), use_tags=False)
    assert trained_text(layout, train) == ["A1<|im_end|>", "A2<|im_end|>"]
    no_eot = train_characters(layout, intent, MaskPolicy(train_end_of_turn=False), use_tags=False)
    assert trained_text(layout, no_eot) == ["A1", "A2"]
    last = train_characters(layout, (False, False, False, True), MaskPolicy(), use_tags=False)
    assert trained_text(layout, last) == ["A2<|im_end|>"]
    assert train_characters(layout, intent, MaskPolicy(mode="all"), use_tags=False).all()


def test_another_roles_trained_message_trains_its_text_only():
    layout = chatml_layout()
    train = train_characters(layout, (True, False, False, False), MaskPolicy(), use_tags=False)
    first_user = layout.first_occurrences_of(0)[0]
    assert np.flatnonzero(train).tolist() == list(range(first_user.start, first_user.end))


# 4. tokens


def test_a_token_counts_when_any_of_its_characters_does():
    trained_chars = np.array([0, 1, 3, 0, 0])
    zero_width = np.array([False, False, False, True, True])
    row_all_trained = np.array([False, False, False, True, False])
    assert tokens_trained(trained_chars, zero_width, row_all_trained).tolist() == [False, True, True, True, False]
