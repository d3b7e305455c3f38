"""Over-long conversations, by whole turns: turn-aware truncation and --overflow split.

The row written for a shortened conversation must be exactly what `prepare` writes for that shorter conversation on
its own (it is rendered again, not cut out of the long rendering's tokens), which matters for templates that are not
prefix-stable: the built-in Mistral template puts the system prompt into the *first* user turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lossmask.pipeline.templates import builtin_source
from lossmask.pipeline.turns import exchanges
from lossmask.schemas.records import Conversation, Message, SourceRef
from lossmask.schemas.shards import RowFlag
from tokenizers import AddedToken, Tokenizer

from .support import BUILTIN_SPECIALS, FIXTURE_TOKENIZER, read_rows, run_prepare, write_jsonl

SYSTEM = "Answer in one short sentence."


def conversation(count: int, system: bool = True) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for i in range(count):
        messages.append({"role": "user", "content": f"Question {i}: which river runs through city number {i}?"})
        messages.append({"role": "assistant", "content": f"Answer {i}: the river of city {i} is long and wide."})
    return {"messages": messages}


def without_exchanges(record: dict[str, Any], dropped: int) -> dict[str, Any]:
    """The same conversation with its first `dropped` user/assistant exchanges left out."""
    messages = record["messages"]
    lead = 1 if messages[0]["role"] == "system" else 0
    return {"messages": messages[:lead] + messages[lead + 2 * dropped :]}


@pytest.fixture(scope="module")
def mistral_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture tokenizer with Mistral's control tokens and the built-in Mistral template (system prompt inside
    the first user turn)."""
    folder = tmp_path_factory.mktemp("mistral")
    spec = BUILTIN_SPECIALS["mistral"]
    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["tokens"]])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": spec["bos"], "eos_token": spec["eos"], "chat_template": builtin_source("mistral")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def positions_of(tmp_path: Path, record: dict[str, Any], name: str, **options: Any) -> list[dict[str, Any]]:
    path = write_jsonl(tmp_path / f"{name}.jsonl", [record])
    _, out = run_prepare(tmp_path, [path], out_name=name, **options)
    return read_rows(out)


def decode(row: dict[str, Any], tokenizer: Path = FIXTURE_TOKENIZER) -> str:
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    return tok.decode(row["input_ids"] + row["target_ids"][-1:], skip_special_tokens=False)


TOKEN_COLUMNS = ("input_ids", "target_ids", "loss_mask", "token_class", "position_ids")


@pytest.mark.parametrize("template", ["chatml", "mistral"])
def test_truncation_drops_the_fewest_earliest_turns_and_equals_preparing_the_shorter_conversation(
    tmp_path, mistral_tokenizer, template
):
    tokenizer = str(FIXTURE_TOKENIZER if template == "chatml" else mistral_tokenizer)
    record = conversation(6)
    (full,) = positions_of(tmp_path, record, "full", tokenizer=tokenizer)
    (tail,) = positions_of(tmp_path, without_exchanges(record, 3), "tail", tokenizer=tokenizer)
    (longer_tail,) = positions_of(tmp_path, without_exchanges(record, 2), "longer", tokenizer=tokenizer)
    limit = tail["num_tokens"] + 1  # room for the last three exchanges, not for four
    assert longer_tail["num_tokens"] > limit and full["num_tokens"] > limit

    (row,) = positions_of(tmp_path, record, "cut", tokenizer=tokenizer, max_length=limit)
    for column in TOKEN_COLUMNS:
        assert row[column] == tail[column], column
    assert row["flags"] == RowFlag.TURNS_DROPPED | RowFlag.TRUNCATED
    text = decode(row, Path(tokenizer))
    assert SYSTEM in text and "Answer 5:" in text and "Question 3:" in text and "Question 2:" not in text


def test_the_mistral_rendering_keeps_the_system_prompt_that_a_token_cut_would_lose(tmp_path, mistral_tokenizer):
    record = conversation(4)
    (full,) = positions_of(tmp_path, record, "full", tokenizer=str(mistral_tokenizer))
    (row,) = positions_of(tmp_path, record, "cut", tokenizer=str(mistral_tokenizer), max_length=full["num_tokens"] - 5)
    text = decode(row, mistral_tokenizer)
    assert text.startswith(f"<s>[INST] {SYSTEM}\n\nQuestion 1:")  # moved into the new first user turn
    # Cutting the first exchange's tokens out of the full rendering would have cut the system prompt with it.
    assert decode(full, mistral_tokenizer).startswith(f"<s>[INST] {SYSTEM}\n\nQuestion 0:")


def test_system_prompt_and_last_answer_are_kept_when_only_they_fit(tmp_path):
    record = conversation(5)
    (last,) = positions_of(tmp_path, without_exchanges(record, 4), "last")
    (row,) = positions_of(tmp_path, record, "cut", max_length=last["num_tokens"])
    assert row["input_ids"] == last["input_ids"] and row["loss_mask"] == last["loss_mask"]
    text = decode(row)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}") and text.endswith(
        "Answer 4: the river of city 4 is long and wide.<|im_end|>\n"
    )
    assert "Answer 3" not in text


@pytest.mark.parametrize("side", ["right", "left"])
def test_when_even_the_last_exchange_does_not_fit_it_is_cut_inside_on_the_chosen_side(tmp_path, side):
    record = conversation(3)
    (last,) = positions_of(tmp_path, without_exchanges(record, 2), "last")
    limit = last["num_tokens"] - 8
    (row,) = positions_of(tmp_path, record, "cut", max_length=limit, truncate_side=side)
    assert row["num_tokens"] == limit
    assert row["flags"] & RowFlag.TURNS_DROPPED and row["flags"] & RowFlag.TRUNCATED
    if side == "right":  # the beginning stays: the system prompt, and the answer loses its end
        assert row["input_ids"] == last["input_ids"][:limit]
        assert row["flags"] & RowFlag.ANSWER_TRUNCATED
    else:  # the end stays: the whole answer and its end-of-turn marker, the system prompt is lost
        assert row["target_ids"] == last["target_ids"][-limit:]
        assert row["loss_mask"] == last["loss_mask"][-limit:]
        assert not row["flags"] & RowFlag.ANSWER_TRUNCATED
        assert SYSTEM not in decode(row)


def test_the_exchange_holding_the_last_trained_turn_is_never_dropped(tmp_path):
    record = conversation(4)
    record["messages"][-1]["weight"] = 0  # the last answer does not train: exchange 2 holds the last trained turn
    (kept,) = positions_of(tmp_path, without_exchanges(record, 2), "kept")
    (row,) = positions_of(tmp_path, record, "cut", max_length=kept["num_tokens"] - 3)
    text = decode(row)
    assert "Answer 2:" in text and "Question 1:" not in text and row["num_loss_tokens"] > 0


def test_split_groups_whole_exchanges_and_trains_every_answer_once(tmp_path):
    record = conversation(7)
    (pair,) = positions_of(tmp_path, without_exchanges(conversation(2), 0), "pair")
    limit = pair["num_tokens"] + 2  # about two exchanges per row
    rows = positions_of(tmp_path, record, "split", max_length=limit, overflow="split")
    assert len(rows) >= 3 and [r["part"] for r in rows] == list(range(len(rows)))
    (single,) = positions_of(tmp_path, conversation(7), "whole")
    trained_total = 0
    answers: list[int] = []
    for row in rows:
        assert row["num_tokens"] <= limit and row["flags"] & RowFlag.WINDOW
        text = decode(row)
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}")
        answers += [i for i in range(7) if f"Answer {i}:" in text]
        trained_total += row["num_loss_tokens"]
    assert answers == list(range(7))  # each answer in exactly one row, in order
    assert trained_total == single["num_loss_tokens"]  # every trained token of the whole conversation, once


def test_split_keeps_last_assistant_mode_meaning_the_conversations_last_turn(tmp_path):
    rows = positions_of(tmp_path, conversation(6), "split", max_length=70, overflow="split", mask="last-assistant")
    manifest_rows = [r for r in rows if r["num_loss_tokens"]]
    assert len(manifest_rows) == 1 and "Answer 5:" in decode(manifest_rows[0])


def test_split_rows_that_train_nothing_are_dropped_and_counted(tmp_path):
    record = conversation(6)
    for message in record["messages"][:-4]:
        message["weight"] = 0  # only the last two exchanges train
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    manifest, out = run_prepare(tmp_path, [path], max_length=60, overflow="split")
    rows = read_rows(out)
    assert all(r["num_loss_tokens"] for r in rows)
    # Weights change no text, so the runs are those of the unweighted conversation; the runs holding neither of
    # the two trained answers are the ones dropped.
    runs = positions_of(tmp_path, conversation(6), "unweighted", max_length=60, overflow="split")
    untrained = [run for run in runs if "Answer 4:" not in decode(run) and "Answer 5:" not in decode(run)]
    assert untrained and len(rows) == len(runs) - len(untrained)
    assert manifest["records"]["written"] == 1 and manifest["records"]["rows_dropped"] == {
        "no_trainable_tokens": len(untrained)
    }


def test_exchanges_start_at_user_turns_and_keep_tool_results_with_their_call():
    roles = ["system", "user", "assistant", "tool", "assistant", "user", "assistant", "user"]
    record = Conversation([Message(role, "x") for role in roles], SourceRef("f", 1))
    parts = exchanges(record)
    assert parts.lead == 1 and parts.starts == [1, 5, 7]
    assert parts.holding(4) == 0 and parts.holding(6) == 1 and parts.holding(0) == -1


@pytest.mark.parametrize("overflow", ["truncate", "split"])
def test_a_conversation_with_no_exchange_is_cut_like_text(tmp_path, overflow):
    record = {"messages": [{"role": "system", "content": "word " * 50}]}
    (row,) = positions_of(tmp_path, record, "system", max_length=20, overflow=overflow, mask="all")
    assert row["num_tokens"] == 20 and row["flags"] & RowFlag.TRUNCATED
