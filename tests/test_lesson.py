"""The lesson's example, end to end with the fixture tokenizer: exactly the answer and its end-of-turn train."""

from __future__ import annotations

from lossmask.schemas.classes import TokenClass
from tokenizers import Tokenizer

from .support import DATA, FIXTURE_TOKENIZER, read_rows, run_prepare

QUESTION = "What's the capital of France?"
ANSWER = "The capital of France is Paris."


def test_only_the_answer_and_its_end_of_turn_count(tmp_path):
    manifest, out = run_prepare(tmp_path, [DATA / "lesson.jsonl"])
    assert manifest["records"] == {**manifest["records"], "read": 1, "written": 1, "rejected": 0, "dropped": 0}
    (row,) = read_rows(out)
    tok = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))

    counted = [t for t, m in zip(row["target_ids"], row["loss_mask"], strict=True) if m]
    assert tok.decode(counted, skip_special_tokens=False) == ANSWER + "<|im_end|>"
    assert counted[-1] == tok.token_to_id("<|im_end|>")

    classes = {TokenClass(c) for c, m in zip(row["token_class"], row["loss_mask"], strict=True) if m}
    assert classes == {TokenClass.ASSISTANT, TokenClass.END_OF_TURN}
    uncounted = [t for t, m in zip(row["target_ids"], row["loss_mask"], strict=True) if not m]
    text = tok.decode(uncounted, skip_special_tokens=False)
    assert QUESTION in text and "user" in text and "assistant" in text  # prompt and headers never count
    assert row["num_loss_tokens"] == len(counted)


def test_targets_are_the_inputs_shifted_by_one(tmp_path):
    _, out = run_prepare(tmp_path, [DATA / "lesson.jsonl"])
    (row,) = read_rows(out)
    assert row["input_ids"][1:] == row["target_ids"][:-1]
    assert row["position_ids"] == list(range(len(row["input_ids"])))
    assert len(row["loss_mask"]) == len(row["token_class"]) == len(row["target_ids"]) == row["num_tokens"]


def test_the_whole_text_is_encoded_once_as_the_model_sees_it(tmp_path):
    """The row's tokens equal encoding the rendered conversation in one call (no piecewise concatenation)."""
    _, out = run_prepare(tmp_path, [DATA / "lesson.jsonl"])
    (row,) = read_rows(out)
    tok = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    rendered = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    assert row["input_ids"] + [row["target_ids"][-1]] == tok.encode(rendered, add_special_tokens=False).ids
