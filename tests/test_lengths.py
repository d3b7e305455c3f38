"""--max-length: truncate (either side), drop or split into windows, and never keep a row that trains nothing."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.audit.report import run_audit
from lossmask.audit.source import run_sample
from lossmask.pipeline.config import PrepareConfig
from lossmask.pipeline.fit import TRUNCATE_SIDES, LengthPolicy, cut, windows
from lossmask.schemas.examples import TokenizedExample
from lossmask.schemas.records import SourceRef
from lossmask.schemas.shards import RowFlag

from .support import FIXTURE_TOKENIZER, read_rejects, read_rows, run_prepare, write_jsonl

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


TEXT = {"text": " ".join(f"word{i}" for i in range(60))}


def test_left_truncation_keeps_the_end_of_a_text(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [TEXT])
    _, whole = run_prepare(tmp_path, [path], out_name="whole")
    _, out = run_prepare(tmp_path, [path], max_length=20, truncate_side="left")
    ((full,), (row,)) = read_rows(whole), read_rows(out)
    assert row["target_ids"] == full["target_ids"][-20:] and row["input_ids"] == full["input_ids"][-20:]
    assert row["position_ids"] == list(range(20))
    assert row["flags"] & RowFlag.TRUNCATED and row["flags"] & RowFlag.ANSWER_TRUNCATED


def test_split_cuts_a_text_into_windows_that_hold_every_target_once(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [TEXT])
    _, whole = run_prepare(tmp_path, [path], out_name="whole")
    manifest, out = run_prepare(tmp_path, [path], max_length=16, overflow="split")
    (full,), rows = read_rows(whole), read_rows(out)
    assert len(rows) == -(-full["num_tokens"] // 16) > 1
    assert [r["part"] for r in rows] == list(range(len(rows)))
    assert all(r["num_tokens"] <= 16 and r["flags"] & RowFlag.WINDOW for r in rows)
    assert [t for r in rows for t in r["target_ids"]] == full["target_ids"]
    assert [t for r in rows for t in r["input_ids"]] == full["input_ids"]
    assert all(r["position_ids"] == list(range(r["num_tokens"])) for r in rows)
    assert manifest["records"]["rows"] == len(rows) and manifest["records"]["written"] == 1


@settings(max_examples=200, deadline=None)
@given(
    flags=st.lists(st.integers(0, 1), min_size=2, max_size=60),
    limit=st.integers(1, 20),
    side=st.sampled_from(TRUNCATE_SIDES),
)
def test_token_policies_keep_rows_within_the_limit_and_lose_exactly_what_they_flag(flags, limit, side):
    n = len(flags)
    example = TokenizedExample(
        ids=np.arange(100, 100 + n, dtype=np.int32),
        trainable=np.array(flags, dtype=np.uint8),
        classes=np.zeros(n, dtype=np.uint8),
        source=SourceRef("f", 1),
    )
    policy = LengthPolicy(limit, "truncate", side)
    kept = cut(example, policy)
    assert kept.ids.size - 1 == min(n - 1, limit)
    start = int(kept.ids[0]) - 100
    assert kept.ids.tolist() == list(range(100 + start, 100 + start + kept.ids.size))  # one contiguous run
    assert start == (0 if side == "right" else n - kept.ids.size)
    lost_targets = sum(flags[1:]) - int(kept.trainable[1:].sum())
    assert bool(kept.flags & RowFlag.ANSWER_TRUNCATED) == (lost_targets > 0)
    assert bool(kept.flags & RowFlag.TRUNCATED) == (n - 1 > limit)

    pieces = windows(example, policy)
    assert all(p.ids.size - 1 <= limit for p in pieces)
    assert [int(t) for p in pieces for t in p.ids[1:]] == example.ids[1:].tolist()  # every target exactly once
    assert [int(t) for p in pieces for t in p.trainable[1:]] == flags[1:]
    for before, after in itertools.pairwise(pieces):
        assert before.ids[-1] == after.ids[0]  # the next window starts with the previous window's last target


def test_the_audit_takes_a_window_end_for_a_cut_not_a_missing_end_of_turn(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Tell me a story. ", "completion": "Once upon a time " * 20}])

    def lints(**options):
        config = PrepareConfig(inputs=[str(path)], tokenizer=str(FIXTURE_TOKENIZER), max_length=20, **options)
        return {lint.code for lint in run_audit(run_sample(config, 10)).fired()}

    assert "eot-missing" not in lints(overflow="split")  # fired on every window but the last before WINDOW counted
    assert "answer-truncated" in lints(overflow="truncate")
