"""One accounting: auditing raw inputs reports exactly the `records` block `prepare` writes for the same job.

Both run `process_batch` and count its outcomes with `Accounting.add` and nothing else, so every length policy must
give the two the same counts, rows dropped inside written records included (they were once counted twice).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from audit_testkit import LESSON, TOKENIZER, prepare_shards, write_jsonl
from lossmask.audit import run_sample
from lossmask.pipeline.config import PrepareConfig

MAX_LENGTH = 8
PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen and so on"
LONG_PROMPT_COMPLETION = {"prompt": PROMPT, "completion": " seventeen"}  # 20 words


def job_inputs(tmp_path: Path) -> list[str]:
    """A job that every policy treats differently: one record fits, the others are longer than MAX_LENGTH."""
    fits = {"prompt": "Hi", "completion": " ok"}
    prompt_completion = write_jsonl(tmp_path / "pc.jsonl", [fits, LONG_PROMPT_COMPLETION])
    with open(prompt_completion, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")  # and one rejected line
    chat = {"messages": LESSON * 3}  # split by whole exchanges, cut inside one under truncate
    return [prompt_completion, write_jsonl(tmp_path / "chat.jsonl", [chat])]


def windows_without_targets(tmp_path: Path) -> int:
    """The split windows of LONG_PROMPT_COMPLETION that hold no counted target, read off its unsplit row: window j
    is its positions [j N, j N + N), so it trains nothing when its loss_mask there is all 0."""
    out = prepare_shards(tmp_path / "whole", [write_jsonl(tmp_path / "long.jsonl", [LONG_PROMPT_COMPLETION])])
    (mask,) = ds.dataset(str(out), format="arrow").to_table().column("loss_mask").to_pylist()
    return sum(not any(mask[j : j + MAX_LENGTH]) for j in range(0, len(mask), MAX_LENGTH))


@pytest.mark.parametrize("overflow", ["split", "drop", "truncate"])
def test_the_raw_input_audit_counts_records_as_prepare_does(tmp_path: Path, overflow: str) -> None:
    inputs = job_inputs(tmp_path)
    options = {"max_length": MAX_LENGTH, "overflow": overflow}
    out = prepare_shards(tmp_path / "shards", inputs, **options)
    prepared = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))["records"]
    audited = run_sample(PrepareConfig(inputs=inputs, tokenizer=TOKENIZER, **options), sample=100).records
    assert audited == prepared
    assert (prepared["read"], prepared["rejected"]) == (4, 1)
    if overflow == "split":  # the case that was counted twice: rows dropped inside a written record
        assert prepared["rows_dropped"] == {"no_trainable_tokens": windows_without_targets(tmp_path)}
        assert prepared["rows_dropped"]["no_trainable_tokens"] > 1
    if overflow == "drop":
        assert prepared["by_reason"]["dropped"]["too_long"] == 2
