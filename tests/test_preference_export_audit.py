"""Pair shards exported for TRL (`export --to hf`) and audited (`audit/pairs.py`)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from lossmask.audit.pairs import audit_pairs, print_pairs
from lossmask.errors import SetupError
from lossmask.export.hf import export_hf
from lossmask.loader.shards import ShardSet
from lossmask.schemas.preference import PairRow, PairSide
from rich.console import Console

from .pair_shards import make_pair, write_pair_shards
from .support import read_rows, run_prepare, write_jsonl
from .test_preference_prepare import REFUSED, SHAPES


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    values = [value for value, _ in SHAPES.values()] * 2 + [value for value, _ in REFUSED]
    _, out = run_prepare(tmp, [write_jsonl(tmp / "pairs.jsonl", values)], shard_max_rows=4)
    return out


def test_hf_export_loads_with_datasets_and_round_trips_to_the_shards(pair_shards, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is in the dev extra")
    info = export_hf(ShardSet(pair_shards), tmp_path / "hf")
    assert len(info["files"]) == 3 and info["layout"] == "pairs"
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf" / "*.parquet"), split="train")
    assert loaded.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    rows = read_rows(pair_shards)
    assert len(loaded) == len(rows) == info["rows"]
    counted = 0
    for example, row in zip(loaded, sorted(rows, key=lambda r: r["record_index"]), strict=True):
        p = row["prompt_length"]
        for side in ("chosen", "rejected"):
            tokens = [*row[f"{side}_input_ids"], row[f"{side}_target_ids"][-1]]
            assert example["prompt_ids"] == tokens[:p]
            completion = example[f"{side}_ids"]
            assert tokens[p : p + len(completion)] == completion  # the side's tokens, after the same prompt
            # what TRL counts (every completion token) is what lossmask counts
            counted_ids = [t for t, m in zip(row[f"{side}_target_ids"], row[f"{side}_loss_mask"], strict=True) if m]
            assert completion == counted_ids
            counted += len(completion)
    assert info["counted"] == counted


def test_hf_export_refuses_a_side_that_trl_would_count_otherwise(tmp_path):
    """An uncounted token inside a completion (e.g. a tool result between two answers): TRL counts it."""
    side = PairSide.from_tokens([1, 2, 3, 4, 5], [0, 0, 1, 0, 1])
    other = PairSide.from_tokens([1, 2, 6, 5], [0, 0, 1, 1])
    shards = write_pair_shards(tmp_path / "pairs", [make_pair([1, 2], [7, 5], [8, 5])], vocab_size=16)
    write_pair_shards(tmp_path / "bad", [PairRow(side, other, 2, "bad.jsonl:1", 0)], vocab_size=16)
    export_hf(ShardSet(shards), tmp_path / "ok")  # the well-formed folder exports
    assert pq.read_table(next((tmp_path / "ok").glob("*.parquet"))).num_rows == 1
    with pytest.raises(SetupError, match="not one run"):
        export_hf(ShardSet(tmp_path / "bad"), tmp_path / "hf")


def test_pair_lints_fire_on_their_rows_only(tmp_path):
    rows = [
        make_pair([1, 2], [3, 4, 0], [5, 0], 0),  # fine
        PairRow(  # the same counted tokens on both sides (they differ in an uncounted token after the stop)
            PairSide.from_tokens([1, 2, 3, 0, 9], [0, 0, 1, 1, 0]),
            PairSide.from_tokens([1, 2, 3, 0, 8], [0, 0, 1, 1, 0]),
            2,
            "pairs.jsonl:2",
            1,
        ),
        make_pair([1, 2], [0], [3, 4, 0], 2),  # chosen is nothing but its stop
        make_pair([1, 2], [3] * 12 + [0], [4, 5, 0], 3),  # 13 counted against 3
    ]
    folder = write_pair_shards(tmp_path / "pairs", rows, vocab_size=16)
    report = audit_pairs(str(folder), show=4)
    fired = {lint.code: [e.row for e in lint.examples] for lint in report.lints if lint.fired}
    assert fired == {"pair-identical-sides": [1], "pair-empty-side": [2], "pair-length-imbalance": [3]}
    assert json.loads(json.dumps(report.to_dict()))["fired"] == list(fired)


def test_audit_shows_pairs_side_by_side_with_their_counted_tokens(pair_shards):
    report = audit_pairs(str(pair_shards), show=2)
    assert not any(lint.fired for lint in report.lints)
    out = io.StringIO()
    print_pairs(report, Console(file=out, no_color=True, width=160))
    text = out.getvalue()
    assert "⟦ 4<|im_end|>⟧" in text and "⟦ 5<|im_end|>⟧" in text  # the raw pair's sides, counted, side by side
    line = next(line for line in text.splitlines() if "⟦ 4<|im_end|>⟧" in line)
    assert line.index("⟦ 4") < line.index("⟦ 5")
    assert "prompt 6 tokens, never counted" in text
    views = {v.row: v for v in report.shown}
    for view in views.values():
        for side in view.sides.values():
            assert side.counted == sum(t.counted for t in side.tokens)  # counted tokens lie after the prompt
    assert np.all([v.prompt_length > 0 for v in views.values()])


def test_the_reference_trainer_runs_dpo_on_prepared_pairs(pair_shards, tmp_path):
    """`lossmask train --objective dpo` on pairs `prepare` wrote: log 2 at step 1, then the pairs get ordered."""
    from lossmask.trainer.train import METRICS_NAME, TrainConfig, train

    config = TrainConfig(objective="dpo", beta=0.5, steps=40, batch_size=4, seq_len=64, layers=1, d_model=32)
    train(pair_shards, tmp_path / "run", config)
    metrics = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert abs(metrics[0]["loss"] - math.log(2)) < 1e-6 and metrics[0]["margin"] == 0.0
    assert np.mean([m["loss"] for m in metrics[-5:]]) < 0.5 * math.log(2)
    assert np.mean([m["margin"] for m in metrics[-5:]]) > 0.5
