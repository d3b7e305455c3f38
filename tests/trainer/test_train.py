"""End to end: the demo shards teach (the loss falls by half), runs repeat bit for bit, and accumulation is exact."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from lossmask.schemas.shards import MANIFEST_NAME
from lossmask.trainer.batches import collate
from lossmask.trainer.model import load
from lossmask.trainer.optim import AdamW
from lossmask.trainer.train import (
    CURVE_NAME,
    METRICS_NAME,
    RUN_NAME,
    WEIGHTS_NAME,
    TrainConfig,
    train,
    train_step,
)

# The demo run: 300 steps of 4 rows (about two epochs of the 591 demo rows) with the default 2-layer d_model-64
# model; --seq-len 256 keeps every row whole (the longest has 243 positions). About 3 s of one core.
DEMO_RUN = TrainConfig(steps=300, batch_size=4, seq_len=256, lr=3e-3, warmup=20, seed=0)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_NAME).read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_demo_shards_teach_the_loss_falls_by_at_least_half(demo_shards: Path, tmp_path: Path) -> None:
    summary = train(demo_shards, tmp_path / "run", DEMO_RUN)
    metrics = read_metrics(tmp_path / "run")
    losses = [m["loss"] for m in metrics]
    assert [m["step"] for m in metrics] == list(range(1, 301))
    # Untrained, the loss on counted (assistant) targets is about log V; trained, less than half of that.
    assert summary["eval"]["loss_before"] == pytest.approx(math.log(1024), abs=0.1)
    assert summary["eval"]["loss_after"] <= 0.5 * summary["eval"]["loss_before"]
    assert np.mean(losses[-20:]) <= 0.5 * np.mean(losses[:20])
    manifest = json.loads((demo_shards / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert summary["data"]["rows"] == manifest["totals"]["rows"] and summary["data"]["complete"]
    assert summary["data"]["rows_cut"] == 0 and summary["data"]["rows_skipped"] == 0
    assert all(m["counted_targets"] > 0 and m["tokens"] >= m["counted_targets"] for m in metrics)


def test_same_seed_same_run_bit_for_bit(demo_shards: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=12, batch_size=4, seq_len=64, seed=7, layers=1, d_model=32, eval_rows=8)
    first = train(demo_shards, tmp_path / "a", config)
    second = train(demo_shards, tmp_path / "b", config)
    keys = ("step", "loss", "counted_targets", "tokens", "lr", "grad_norm")
    runs = [[{k: m[k] for k in keys} for m in read_metrics(tmp_path / name)] for name in ("a", "b")]
    assert runs[0] == runs[1]
    assert first["eval"] == second["eval"]
    params_a, _ = load(tmp_path / "a" / WEIGHTS_NAME)
    params_b, _ = load(tmp_path / "b" / WEIGHTS_NAME)
    assert all(np.array_equal(params_a[name], params_b[name]) for name in params_a)

    other = train(demo_shards, tmp_path / "c", TrainConfig(**{**vars(config), "seed": 8}))
    assert [m["loss"] for m in read_metrics(tmp_path / "c")] != [m["loss"] for m in runs[0]]
    assert other["first_loss"] != first["first_loss"]


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_accumulated_micro_batches_step_like_one_batch(tiny, make_example, norm: str) -> None:
    config, params = tiny
    rng = np.random.default_rng(71)
    rows = [make_example(rng, n) for n in (3, 9, 5, 2, 7, 4)]  # micro-batches with unequal counted targets
    whole = {name: value.copy() for name, value in params.items()}
    split = {name: value.copy() for name, value in params.items()}
    # eps = 1 makes the first AdamW update depend on the gradient's size, not only on its sign.
    one = train_step(whole, config, AdamW(whole, eps=1.0), [collate(rows)], norm, grad_clip=0.0, lr=1e-2)
    micro = [collate(rows[:2]), collate(rows[2:])]
    two = train_step(split, config, AdamW(split, eps=1.0), micro, norm, grad_clip=0.0, lr=1e-2)
    assert two.loss == pytest.approx(one.loss, rel=1e-12)
    assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-12)
    for name in params:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-10, atol=1e-13)


def test_a_run_writes_metrics_curve_weights_and_summary(demo_shards: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=5, batch_size=4, seq_len=64, layers=1, d_model=16, heads=2, eval_rows=4)
    summary = train(demo_shards, tmp_path, config)
    metrics = read_metrics(tmp_path)
    assert set(metrics[0]) >= {"step", "loss", "counted_targets", "tokens", "tokens_per_s", "lr", "grad_norm"}
    assert json.loads((tmp_path / RUN_NAME).read_text())["last_loss"] == summary["last_loss"] == metrics[-1]["loss"]

    params, model_config = load(tmp_path / WEIGHTS_NAME)
    assert model_config.d_model == 16 and model_config.vocab_size == 1024 and model_config.block_size == 64
    assert params["wte"].shape == (1024, 16) and params["wte"].dtype == np.float32

    svg = ET.parse(tmp_path / CURVE_NAME).getroot()
    lines = {e.get("class"): e for e in svg.iter("{http://www.w3.org/2000/svg}polyline")}
    points = [tuple(map(float, p.split(","))) for p in lines["loss"].get("points").split()]
    assert len(points) == 5
    losses = [m["loss"] for m in metrics]
    # Higher loss is drawn higher up (smaller y), step by step.
    assert np.argmin([y for _, y in points]) == int(np.argmax(losses))
    assert [x for x, _ in points] == sorted(x for x, _ in points)
