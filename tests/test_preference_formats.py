"""Preference data, every shape: TRL's explicit pairs (text or messages), the implicit-prompt pairs, field maps,
KTO's judged answers; detection, the reasons a record is refused, and what an SFT job makes of each."""

from __future__ import annotations

import json

import pytest
from lossmask.errors import RecordError
from lossmask.pipeline.formats import FORMAT_NAMES, detect, parse, parse_preference
from lossmask.pipeline.formats.options import FormatOptions
from lossmask.schemas.reasons import REJECT_REASONS
from lossmask.schemas.records import (
    Conversation,
    Message,
    PreferenceExample,
    PreferencePair,
    PromptCompletion,
    SourceRef,
)

from .support import REALWORLD, realworld

SRC = SourceRef("prefs.jsonl", 1)
OPTIONS = FormatOptions()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pair(value: dict, options: FormatOptions = OPTIONS) -> PreferencePair:
    record = parse_preference(value, SRC, None, options)
    assert isinstance(record, PreferencePair)
    return record


def refused(value: dict, options: FormatOptions = OPTIONS) -> RecordError:
    with pytest.raises(RecordError) as caught:
        parse_preference(value, SRC, None, options)
    assert caught.value.reason in REJECT_REASONS
    return caught.value


def contents(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "preference"),
        ({"chosen": [], "rejected": []}, "preference"),
        # UltraFeedback-binarized carries `messages` beside its pair: still a pair.
        ({"prompt": "Q", "chosen": [], "rejected": [], "messages": []}, "preference"),
        ({"messages": [], "label": True}, "kto"),
        ({"prompt": "Q", "completion": "A", "label": False}, "kto"),
        ({"messages": [], "label": 1}, "openai"),  # a label that is not a boolean is no judgement
        ({"prompt": "Q", "completion": "A", "label": "yes"}, "prompt_completion"),
        ({"chosen": "A"}, None),
    ],
)
def test_detection(value, expected):
    assert detect(value, OPTIONS) == expected


def test_both_formats_can_be_forced():
    assert {"preference", "kto"} <= set(FORMAT_NAMES)
    record = parse_preference({"prompt": "Q", "completion": "A", "label": True}, SRC, "kto", OPTIONS)
    assert isinstance(record, PreferenceExample) and record.label is True


def test_explicit_text_pair():
    record = pair({"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"})
    assert (record.prompt, record.chosen, record.rejected) == ("2 + 2 =", " 4", " 5")
    assert not record.conversational and record.source == SRC and record.kind == "preference"


def test_explicit_conversational_pair():
    record = pair(
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {**user("Sky?"), "weight": 1}],
            "chosen": [assistant("Blue.")],
            "rejected": [assistant("Green.")],
            "tools": [{"name": "f", "parameters": {}}],
        }
    )
    assert record.conversational
    assert contents(record.prompt) == [("system", "Be brief."), ("user", "Sky?")]
    assert all(m.train is False for m in record.prompt)  # the prompt never trains, whatever the data said
    assert contents(record.chosen) == [("assistant", "Blue.")]
    assert contents(record.rejected) == [("assistant", "Green.")]
    assert record.tools == [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def test_implicit_prompt_is_the_shared_messages():
    record = pair(
        {
            "chosen": [user("Hi"), assistant("Hello."), user("Sky?"), assistant("Blue.")],
            "rejected": [user("Hi"), assistant("Hello."), user("Sky?"), assistant("Green."), user("Sure?")],
        }
    )
    assert contents(record.prompt) == [("user", "Hi"), ("assistant", "Hello."), ("user", "Sky?")]
    assert contents(record.chosen) == [("assistant", "Blue.")]
    assert contents(record.rejected) == [("assistant", "Green."), ("user", "Sure?")]
    assert all(m.train is False for m in record.prompt)


def test_a_text_prompt_beside_whole_conversations_is_read_as_trl_reads_it():
    """UltraFeedback-binarized: `prompt` repeats the user's message; the split comes from the conversations."""
    record = pair(
        {"prompt": "Sky?", "chosen": [user("Sky?"), assistant("Blue.")], "rejected": [user("Sky?"), assistant("Red.")]}
    )
    assert contents(record.prompt) == [("user", "Sky?")]
    assert contents(record.chosen) == [("assistant", "Blue.")]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # The sides differ at a user message: no prompt that ends before an assistant answer on both.
        (
            {"chosen": [user("A"), assistant("x")], "rejected": [user("B"), assistant("x")]},
            "preference_prompt_mismatch",
        ),
        (
            {"chosen": [user("Q"), user("more"), assistant("x")], "rejected": [user("Q"), assistant("y")]},
            "preference_prompt_mismatch",
        ),
        # Nothing shared at all, even if both begin with an answer.
        ({"chosen": [assistant("x")], "rejected": [assistant("y")]}, "preference_prompt_mismatch"),
        ({"prompt": [user("Q")], "chosen": [user("x")], "rejected": [assistant("y")]}, "preference_prompt_mismatch"),
        ({"chosen": [user("Q"), assistant("x")], "rejected": [user("Q")]}, "preference_empty_side"),
        ({"prompt": [user("Q")], "chosen": [], "rejected": [assistant("y")]}, "preference_empty_side"),
        ({"prompt": "Q", "chosen": "", "rejected": "y"}, "preference_empty_side"),
        (
            {"chosen": [user("Q"), assistant("x")], "rejected": [user("Q"), assistant("x")]},
            "preference_identical_sides",
        ),
        (
            {"prompt": [user("Q")], "chosen": [assistant("x")], "rejected": [assistant("x")]},
            "preference_identical_sides",
        ),
        ({"prompt": "Q", "chosen": "x", "rejected": "x"}, "preference_identical_sides"),
        ({"chosen": "x", "rejected": "y"}, "preference_no_prompt"),
        ({"prompt": "Q", "chosen": "x", "rejected": [assistant("y")]}, "wrong_type"),
        ({"prompt": 3, "chosen": "x", "rejected": "y"}, "wrong_type"),
        (
            {"prompt": [user("Q")], "chosen": [{"role": "wizard", "content": "x"}], "rejected": [assistant("y")]},
            "unknown_role",
        ),
        ({"prompt": "Q", "chosen": "x"}, "unknown_format"),  # no rejected: not detected as a pair at all
        ({"messages": [user("Q"), assistant("x")]}, "unknown_format"),  # chat data is not preference data
    ],
)
def test_refused_pairs_say_why(value, reason):
    assert refused(value).reason == reason


def test_field_maps_name_every_part():
    options = FormatOptions(fields={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert detect({"q": "Q", "good": "x", "bad": "y"}, options) == "preference"
    record = pair({"q": "Q", "good": "x", "bad": "y"}, options)
    assert (record.prompt, record.chosen, record.rejected) == ("Q", "x", "y")
    kto = FormatOptions(fields={"messages": "conversation", "label": "ok"})
    value = {"conversation": [user("Q"), assistant("x")], "ok": False}
    assert detect(value, kto) == "kto"
    assert parse_preference(value, SRC, None, kto).label is False


def test_kto_messages_judge_the_last_answer():
    value = {"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")], "label": False}
    record = parse_preference(value, SRC, None, OPTIONS)
    assert isinstance(record, PreferenceExample) and record.kind == "kto" and record.label is False
    assert isinstance(record.record, Conversation)
    assert [m.train for m in record.record.messages] == [False, False, False, None]  # the answer: the policy's say


def test_kto_prompt_completion_shapes():
    text = parse_preference({"prompt": "Q", "completion": "A", "label": True}, SRC, None, OPTIONS)
    assert isinstance(text.record, PromptCompletion) and text.record.completion == "A"
    chat = parse_preference({"prompt": [user("Q")], "completion": [assistant("A")], "label": True}, SRC, None, OPTIONS)
    assert isinstance(chat.record, Conversation)
    assert [m.train for m in chat.record.messages] == [False, None]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"messages": [user("Q"), assistant("A"), user("Q2")], "label": True}, "preference_empty_side"),
        ({"messages": [user("Q"), assistant("")], "label": True}, "preference_empty_side"),
        ({"prompt": "Q", "completion": "", "label": True}, "preference_empty_side"),
        ({"prompt": [user("Q")], "completion": [], "label": True}, "preference_empty_side"),
        ({"messages": [user("Q"), assistant("A")], "label": "true"}, "wrong_type"),
    ],
)
def test_refused_kto_records_say_why(value, reason):
    with pytest.raises(RecordError) as caught:
        parse_preference(value, SRC, "kto", OPTIONS)
    assert caught.value.reason == reason


def test_what_an_sft_job_makes_of_preference_data():
    """A pair has no SFT reading; a KTO record is read as its conversation, as the openai format reads it."""
    with pytest.raises(RecordError) as caught:
        parse({"prompt": "Q", "chosen": "x", "rejected": "y"}, SRC, None, OPTIONS)
    assert caught.value.reason == "preference_record"
    value = {"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")], "label": False}
    assert parse(value, SRC, None, OPTIONS) == parse(value, SRC, "openai", OPTIONS)


@realworld
@pytest.mark.realworld
def test_kit_stack_exchange_paired_parses_with_a_field_map():
    values = json.loads((REALWORLD / "data/torchtune/stack_exchange_paired_tiny.json").read_text(encoding="utf-8"))
    assert detect(values[0], OPTIONS) is None  # its own names: unknown until mapped, as the issue found
    options = FormatOptions(fields={"prompt": "question", "chosen": "response_j", "rejected": "response_k"})
    records = [parse_preference(v, SourceRef("se.json", i + 1, i), None, options) for i, v in enumerate(values)]
    assert len(records) == 25 and all(isinstance(r, PreferencePair) and not r.conversational for r in records)
    assert records[3].prompt == values[3]["question"] and records[3].chosen == values[3]["response_j"]


@realworld
@pytest.mark.realworld
def test_kit_kto_demo_parses_with_its_labels():
    values = json.loads((REALWORLD / "data/llamafactory/kto_en_demo.json").read_text(encoding="utf-8"))
    assert detect(values[0], OPTIONS) == "kto"
    records = [parse_preference(v, SourceRef("kto.json", i + 1, i), None, OPTIONS) for i, v in enumerate(values)]
    assert [r.label for r in records] == [v["label"] for v in values]
    assert sum(r.label for r in records) == 150 and len(records) == 300
    for record, value in zip(records, values, strict=True):
        messages = record.record.messages
        assert messages[-1].content == value["messages"][-1]["content"] and messages[-1].role == "assistant"
        assert all(m.train is False for m in messages[:-1])
