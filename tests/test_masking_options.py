"""Mask policies: what trains under each option, on the fixture ChatML tokenizer."""

from __future__ import annotations

from lossmask.schemas.classes import TokenClass
from tokenizers import Tokenizer

from .support import FIXTURE_TOKENIZER, read_rows, run_prepare, write_jsonl

TOK = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "Second."},
    ]
}


def counted(tmp_path, record=CHAT, **options) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    _, out = run_prepare(tmp_path, [path], **options)
    text = ""
    for row in read_rows(out):
        text += TOK.decode(
            [t for t, m in zip(row["target_ids"], row["loss_mask"], strict=True) if m], skip_special_tokens=False
        )
    return text


def test_assistant_is_the_default(tmp_path):
    assert counted(tmp_path) == "First.<|im_end|>Second.<|im_end|>"


def test_last_assistant(tmp_path):
    assert counted(tmp_path, mask="last-assistant") == "Second.<|im_end|>"


def test_all_trains_every_target(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [CHAT])
    _, out = run_prepare(tmp_path, [path], mask="all")
    (row,) = read_rows(out)
    assert all(row["loss_mask"])


def test_end_of_turn_can_be_left_untrained(tmp_path):
    assert counted(tmp_path, train_end_of_turn=False) == "First.Second."


def test_data_weights_win_over_the_role_rule(tmp_path):
    record = {"messages": [dict(m) for m in CHAT["messages"]]}
    record["messages"][2]["weight"] = 0
    record["messages"][1]["weight"] = 1  # a user turn the data asks to train
    assert counted(tmp_path, record) == "One?Second.<|im_end|>"


def test_train_roles(tmp_path):
    assert counted(tmp_path, train_roles=["assistant", "system"]) == "Be brief.First.<|im_end|>Second.<|im_end|>"


def test_reasoning_is_written_in_think_tags_when_the_template_ignores_it(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A.", "reasoning_content": "hmm"},
        ]
    }
    assert counted(tmp_path, record) == "<think>\nhmm\n</think>\n\nA.<|im_end|>"
    assert counted(tmp_path, record, train_reasoning=False, out_name="no-reasoning") == "A.<|im_end|>"
    path = write_jsonl(tmp_path / "r.jsonl", [record])
    _, out = run_prepare(tmp_path, [path], out_name="classes")
    (row,) = read_rows(out)
    classes = {TokenClass(c) for c, m in zip(row["token_class"], row["loss_mask"], strict=True) if m}
    assert classes == {TokenClass.REASONING, TokenClass.ASSISTANT, TokenClass.END_OF_TURN}


def test_a_conversation_whose_turns_are_all_weighted_out_is_dropped(tmp_path):
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 0}]}
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    manifest, _ = run_prepare(tmp_path, [path])
    assert manifest["records"]["by_reason"]["dropped"] == {"no_trainable_tokens": 1}
