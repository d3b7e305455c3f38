"""--max-length: truncate or drop, and never keep a row that trains nothing."""

from __future__ import annotations

from lossmask.schemas.shards import RowFlag

from .conftest import read_rejects, read_rows, run_prepare, write_jsonl

LONG = {
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris. " * 10},
    ]
}


def test_truncate_keeps_at_most_max_length_positions_and_flags_cut_answers(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [LONG])
    _, out = run_prepare(tmp_path, [path], max_length=30)
    (row,) = read_rows(out)
    assert row["num_tokens"] == 30 == len(row["input_ids"])
    assert row["flags"] & RowFlag.TRUNCATED and row["flags"] & RowFlag.ANSWER_TRUNCATED
    assert row["num_loss_tokens"] > 0


def test_drop_policy(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [LONG])
    manifest, out = run_prepare(tmp_path, [path], max_length=30, overflow="drop")
    assert manifest["records"]["dropped"] == 1 and read_rejects(out)[0]["reason"] == "too_long"


def test_a_row_whose_answer_was_cut_entirely_is_dropped_not_written(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [LONG])
    manifest, out = run_prepare(tmp_path, [path], max_length=12)  # only the prompt fits
    assert manifest["records"]["by_reason"]["dropped"] == {"no_trainable_tokens": 1}
    assert read_rows(out) == [] and manifest["records"]["written"] == 0
