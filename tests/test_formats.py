"""Every input format, detected per file, normalized to one record; field and role names remappable."""

from __future__ import annotations

import json

import pytest
from lossmask.errors import RecordError
from lossmask.pipeline.formats import detect, parse
from lossmask.pipeline.formats.options import FormatOptions
from lossmask.schemas.classes import TokenClass
from lossmask.schemas.records import Conversation, PromptCompletion, SourceRef, TextDocument
from tokenizers import Tokenizer

from .support import DATA, FIXTURE_TOKENIZER, read_rows, run_prepare, write_jsonl

SRC = SourceRef("f", 1)
OPTIONS = FormatOptions()
TOK = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))


def counted_text(row):
    ids = [t for t, m in zip(row["target_ids"], row["loss_mask"], strict=True) if m]
    return TOK.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"messages": []}, "openai"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "", "output": ""}, "alpaca"),
        ({"prompt": "", "completion": ""}, "prompt_completion"),
        ({"text": ""}, "text"),
        ({"other": 1}, None),
    ],
)
def test_detection(value, expected):
    assert detect(value, OPTIONS) == expected


def test_openai_parts_weights_reasoning_and_tool_calls():
    record = parse(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "value": "Hi"}, {"type": "text", "text": "!"}],
                    "weight": 0,
                },
                {
                    "role": "assistant",
                    "content": [{"type": "reasoning", "value": "think"}, {"type": "text", "value": "Hello."}],
                    "loss_weight": 1.0,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ],
            "tools": json.dumps([{"type": "function", "function": {"name": "f"}}]),
        },
        SRC,
        None,
        OPTIONS,
    )
    assert isinstance(record, Conversation)
    system, user, assistant, tool = record.messages
    assert system.content == "Be brief." and user.content == "Hi!" and user.train is False
    assert assistant.reasoning == "think" and assistant.content == "Hello." and assistant.train is True
    # Arguments keep the type the data gave (a JSON string stays a string); see pipeline/tool_calls.py.
    assert assistant.tool_calls[0].arguments == '{"a": 1}' and assistant.tool_calls[0].id == "c1"
    assert tool.role == "tool" and tool.tool_call_id == "c1" and record.tools[0]["function"]["name"] == "f"


def test_sharegpt_function_call_and_observation():
    record = parse(
        {
            "system": "sys",
            "conversations": [
                {"from": "human", "value": "weather?"},
                {"from": "function_call", "value": '{"name": "w", "arguments": {"city": "Oslo"}}'},
                {"from": "observation", "value": "rain"},
                {"from": "gpt", "value": "It rains."},
            ],
        },
        SRC,
        None,
        OPTIONS,
    )
    roles = [(m.role, m.content, bool(m.tool_calls)) for m in record.messages]
    assert roles == [
        ("system", "sys", False),
        ("user", "weather?", False),
        ("assistant", "", True),
        ("tool", "rain", False),
        ("assistant", "It rains.", False),
    ]
    assert record.messages[2].tool_calls[0].arguments == {"city": "Oslo"}


def test_alpaca_with_input_system_and_history():
    record = parse(
        {"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "math", "history": [["1+1?", "2"]]},
        SRC,
        None,
        OPTIONS,
    )
    assert [(m.role, m.content) for m in record.messages] == [
        ("system", "math"),
        ("user", "1+1?"),
        ("assistant", "2"),
        ("user", "Add.\n\n2 and 3"),
        ("assistant", "5"),
    ]


def test_prompt_completion_strings_and_message_lists():
    raw = parse({"prompt": "Q:", "completion": " A"}, SRC, None, OPTIONS)
    assert isinstance(raw, PromptCompletion)
    chat = parse(
        {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]},
        SRC,
        None,
        OPTIONS,
    )
    assert isinstance(chat, Conversation) and [m.train for m in chat.messages] == [False, None]
    with pytest.raises(RecordError) as caught:
        parse({"prompt": "Q", "completion": [{"role": "assistant", "content": "A"}]}, SRC, None, OPTIONS)
    assert caught.value.reason == "wrong_type"


def test_text_and_its_errors():
    assert isinstance(parse({"text": "hello"}, SRC, None, OPTIONS), TextDocument)
    for value, reason in (({"text": ""}, "empty_text"), ({"text": 3}, "wrong_type"), ({"x": 1}, "unknown_format")):
        with pytest.raises(RecordError) as caught:
            parse(value, SRC, None, OPTIONS)
        assert caught.value.reason == reason


def test_field_and_role_names_are_remappable():
    options = FormatOptions(
        fields={"messages": "dialog", "role": "speaker", "content": "text"}, roles={"bot": "assistant"}
    )
    record = parse(
        {"dialog": [{"speaker": "user", "text": "Hi"}, {"speaker": "bot", "text": "Yo"}]}, SRC, None, options
    )
    assert [(m.role, m.content) for m in record.messages] == [("user", "Hi"), ("assistant", "Yo")]


def test_every_fixture_format_prepares_with_answers_counted(tmp_path):
    for name in ("openai.jsonl", "sharegpt.json", "alpaca.json", "tools.jsonl"):
        manifest, out = run_prepare(tmp_path, [DATA / name], out_name=name)
        assert manifest["records"]["written"] == manifest["records"]["read"] > 0, name
        for row in read_rows(out)[:20]:
            assert counted_text(row).endswith("<|im_end|>")


def test_raw_prompt_completion_trains_the_completion_and_eos(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Question: 2+2?\nAnswer:", "completion": " 4"}])
    _, out = run_prepare(tmp_path, [path])
    (row,) = read_rows(out)
    assert counted_text(row) == " 4<|im_end|>"
    assert TokenClass(row["token_class"][-1]) == TokenClass.END_OF_TURN


def test_plain_text_trains_every_token_and_ends_with_eos(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "The sky is blue."}])
    _, out = run_prepare(tmp_path, [path])
    (row,) = read_rows(out)
    assert all(row["loss_mask"]) and row["target_ids"][-1] == TOK.token_to_id("<|im_end|>")
    assert (
        TOK.decode(row["input_ids"] + row["target_ids"][-1:], skip_special_tokens=False) == "The sky is blue.<|im_end|>"
    )
