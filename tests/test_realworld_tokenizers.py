"""The kit's real tokenizers: one BOS where tokenizer and template both add one, GOLDEN ids, and the context
before the final answer equal to what Mistral's own encoder gives for inference.

Uses ../shared/realworld (skipped with a reason when absent).
"""

from __future__ import annotations

import json

import pytest
from lossmask.schemas.shards import RowFlag

from .support import REALWORLD, read_rows, realworld, run_prepare, write_jsonl

pytestmark = [realworld, pytest.mark.realworld]

TOKENIZERS = REALWORLD / "tokenizers"
GOLDEN = json.loads((TOKENIZERS / "GOLDEN.json").read_text(encoding="utf-8")) if TOKENIZERS.is_dir() else {}
NAMES = sorted(GOLDEN.get("tokenizers", {}))
DOUBLE_BOS = ["mistral-v3", "mistral-nemo-tekken", "llama3-style", "gemma-style"]


def prepare_golden(tmp_path, name):
    path = write_jsonl(tmp_path / "golden.jsonl", [{"messages": GOLDEN["conversation"]}])
    manifest, out = run_prepare(tmp_path, [path], tokenizer=str(TOKENIZERS / name), out_name=name)
    rows = read_rows(out)
    return manifest, rows


@pytest.mark.parametrize("name", NAMES)
def test_golden_conversation_gives_the_golden_ids(tmp_path, name):
    manifest, rows = prepare_golden(tmp_path, name)
    assert manifest["records"]["written"] == 1, manifest["records"]
    row = rows[-1]  # the row that renders the whole conversation
    assert row["input_ids"] + row["target_ids"][-1:] == GOLDEN["tokenizers"][name]["full"]["ids"]


@pytest.mark.parametrize("name", DOUBLE_BOS)
def test_double_bos_tokenizers_produce_a_single_bos(tmp_path, name):
    config = json.loads((TOKENIZERS / name / "tokenizer_config.json").read_text(encoding="utf-8"))
    bos = config["bos_token"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZERS / name / "tokenizer.json"))
    bos_id = tokenizer.token_to_id(bos)
    assert tokenizer.encode("x").ids[0] == bos_id  # the post-processor adds BOS...
    _, rows = prepare_golden(tmp_path, name)
    for row in rows:  # ...and so does the template, yet each row starts with exactly one
        ids = row["input_ids"]
        assert ids[0] == bos_id and ids[1] != bos_id and ids.count(bos_id) == 1
        assert not row["flags"] & RowFlag.DOUBLE_BOS


@pytest.mark.parametrize("name", ["mistral-v3", "mistral-nemo-tekken"])
def test_context_before_the_last_answer_equals_mistral_common(tmp_path, name):
    """mistral_common_ids come from Mistral's own encoder, not from a chat template: an independent reference."""
    reference = GOLDEN["tokenizers"][name]["prompt_3_with_generation_prompt"]["mistral_common_ids"]
    _, rows = prepare_golden(tmp_path, name)
    row = rows[-1]
    tokens = row["input_ids"] + row["target_ids"][-1:]
    assert tokens[: len(reference)] == reference
    n = len(reference)  # target k predicts token k + 1: training starts exactly where inference generation starts
    assert row["loss_mask"][n - 2] == 0 and row["loss_mask"][n - 1] == 1
