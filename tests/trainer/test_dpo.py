"""`lossmask train --objective dpo`: the DPO loss over pair shards, with the SFT model's hand-written backward.

Its claims: at step 0 the loss is log 2; it falls on pairs made from the fixtures while the chosen-minus-rejected
margin rises; a prompt (masked) target teaches nothing; the gradient equals finite differences and torch's
autograd; accumulation is exact; the same seed gives the same run, bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.schemas.preference import PairRow
from lossmask.trainer.batches import PairBatch, StreamStats, collate_pairs, fitted
from lossmask.trainer.dpo import dpo_loss_and_grad, dpo_step, logps_of, scores_of, token_weights
from lossmask.trainer.loss import target_nll
from lossmask.trainer.model import ModelConfig, Params, forward, load
from lossmask.trainer.optim import AdamW
from lossmask.trainer.shards import Example, Pair, iter_pairs, open_shards
from lossmask.trainer.train import METRICS_NAME, WEIGHTS_NAME, TrainConfig, train

from ..pair_shards import make_pair, random_pairs, write_fixture_pairs, write_pair_shards
from .conftest import TINY
from .finite_differences import assert_gradients_match

LOG2 = math.log(2)
# 150 steps of 8 pairs (about 3.5 epochs of the 339 fixture pairs), a 1-layer d_model-32 model: about 2 s.
FIXTURE_RUN = TrainConfig(
    objective="dpo", beta=0.1, steps=150, batch_size=8, seq_len=64, layers=1, d_model=32, eval_rows=64
)


def side(part) -> Example:
    n = part.input_ids.size
    return Example(
        input_ids=part.input_ids.astype(np.int64),
        target_ids=part.target_ids.astype(np.int64),
        loss_mask=part.loss_mask.astype(np.uint8),
        position_ids=np.arange(n, dtype=np.int64),
        segment_ids=np.zeros(n, dtype=np.int32),
    )


def as_pair(row: PairRow) -> Pair:
    return Pair(side(row.chosen), side(row.rejected))


def tiny_pairs(seed: int, count: int = 3) -> PairBatch:
    """Pairs of different lengths, so that padding and masked prompts are both in the batch."""
    rows = random_pairs(np.random.default_rng(seed), count, TINY.vocab_size, longest=6)
    batch = collate_pairs([as_pair(r) for r in rows])
    assert (batch.rows.segment_ids == -1).any() and (~batch.rows.loss_mask.astype(bool)).any()
    return batch


def perturbed(params: Params, seed: int, scale: float = 0.1) -> Params:
    rng = np.random.default_rng(seed)
    return {name: value + scale * rng.standard_normal(value.shape) for name, value in params.items()}


@pytest.fixture(scope="module")
def fixture_pairs(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pairs from the demo rows: each one-answer row's prompt, its own answer (chosen), another row's (rejected)."""
    return write_fixture_pairs(demo_shards, tmp_path_factory.mktemp("pairs") / "shards")


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_NAME).read_text(encoding="utf-8").splitlines()]


def test_initial_loss_is_log_2(tiny) -> None:
    """The policy starts as the reference: every reward is exactly 0, so the loss is -log σ(0) = log 2."""
    config, params = tiny
    reference = {name: value.copy() for name, value in params.items()}
    for beta in (0.1, 1.0, 5.0):
        loss, scores, _ = dpo_loss_and_grad(params, reference, config, tiny_pairs(3, 5), beta, num_pairs=5)
        assert abs(loss - LOG2) < 1e-6
        assert np.all(scores.margins == 0.0) and np.all(scores.chosen_rewards == 0.0)


def test_initial_loss_is_log_2_on_the_fixture_pairs(fixture_pairs: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**vars(FIXTURE_RUN), "steps": 1})
    summary = train(fixture_pairs, tmp_path / "run", config)
    (first,) = read_metrics(tmp_path / "run")
    assert abs(first["loss"] - LOG2) < 1e-6 and abs(summary["eval"]["before"]["loss"] - LOG2) < 1e-6
    assert first["margin"] == 0.0 and first["accuracy"] == 0.0 and first["pairs"] == 8


def test_the_loss_falls_and_the_margin_rises_on_the_fixture_pairs(fixture_pairs: Path, tmp_path: Path) -> None:
    summary = train(fixture_pairs, tmp_path / "run", FIXTURE_RUN)
    metrics = read_metrics(tmp_path / "run")
    losses = [m["loss"] for m in metrics]
    assert np.mean(losses[-20:]) < 0.5 * LOG2
    assert np.mean([m["margin"] for m in metrics[-20:]]) > 1.0 > np.mean([m["margin"] for m in metrics[:5]])
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    assert before == {"loss": LOG2, "margin": 0.0, "accuracy": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}
    assert after["loss"] < 0.5 * LOG2 and after["margin"] > 1.0 and after["accuracy"] > 0.8
    assert summary["data"]["rows"] == 339 and summary["data"]["rows_skipped"] == 0
    assert all(m["counted_targets"] > 0 and m["tokens"] > m["counted_targets"] for m in metrics)


def test_a_masked_prompt_target_gets_no_gradient(tiny) -> None:
    """Changing the id of a target with loss_mask 0 (a prompt target, on either side) leaves the loss and every
    gradient bit for bit unchanged, in float64 and float32; the same change on a counted target does not."""
    config64, params64 = tiny
    for config, params in (
        (config64, params64),
        (ModelConfig(**{**vars(config64), "dtype": "float32"}), {n: v.astype(np.float32) for n, v in params64.items()}),
    ):
        reference = perturbed(params, 5)
        batch = tiny_pairs(8)
        rows = batch.rows
        scores = scores_of(logps_of(params, config, batch), logps_of(reference, config, batch), 0.5)
        weights = token_weights(scores, rows.loss_mask, 0.5, batch.num_pairs)
        masked = ~rows.loss_mask.astype(bool)
        assert np.all(weights[masked] == 0.0) and np.all(weights[: batch.num_pairs][~masked[: batch.num_pairs]] > 0)
        assert np.all(weights[batch.num_pairs :][~masked[batch.num_pairs :]] < 0)  # the rejected side is pushed down

        loss, _, grads = dpo_loss_and_grad(params, reference, config, batch, 0.5, batch.num_pairs)
        prompt = masked & (rows.segment_ids >= 0)
        assert prompt[0].any() and prompt[batch.num_pairs].any()  # a chosen and a rejected prompt target
        changed = PairBatch(rows=type(rows)(**{**vars(rows), "target_ids": rows.target_ids.copy()}))
        changed.rows.target_ids[prompt] = (changed.rows.target_ids[prompt] + 1) % config.vocab_size
        loss2, _, grads2 = dpo_loss_and_grad(params, reference, config, changed, 0.5, batch.num_pairs)
        assert loss2 == loss and all(np.array_equal(grads[n], grads2[n]) for n in grads)

        counted = PairBatch(rows=type(rows)(**{**vars(rows), "target_ids": rows.target_ids.copy()}))
        row, col = np.argwhere(~masked)[0]
        counted.rows.target_ids[row, col] = (counted.rows.target_ids[row, col] + 1) % config.vocab_size
        loss3, _, grads3 = dpo_loss_and_grad(params, reference, config, counted, 0.5, batch.num_pairs)
        assert loss3 != loss and not np.array_equal(grads["lm_head"], grads3["lm_head"])


@pytest.mark.slow  # one pair of forward passes per parameter entry
def test_dpo_gradient_matches_finite_differences(tiny) -> None:
    config, params = tiny
    reference = perturbed(params, 9)  # a reference unlike the policy: rewards and σ(-z) differ per pair
    batch = tiny_pairs(21)
    beta = 0.7

    def loss_of(p: Params) -> float:
        return dpo_loss_and_grad(p, reference, config, batch, beta, batch.num_pairs)[0]

    _, scores, grads = dpo_loss_and_grad(params, reference, config, batch, beta, batch.num_pairs)
    assert np.ptp(scores.margins) > 0.1  # the pairs sit at different points of the sigmoid
    assert_gradients_match(params, grads, loss_of)


def test_dpo_loss_and_logit_gradient_equal_torch_autograd(tiny) -> None:
    torch = pytest.importorskip("torch")
    from lossmask.trainer.loss import weighted_nll_grad

    config, params = tiny
    reference = perturbed(params, 2)
    batch = tiny_pairs(4, 4)
    rows, beta, half = batch.rows, 0.3, batch.num_pairs
    logits, _ = forward(params, config, rows.input_ids, rows.position_ids, rows.segment_ids)
    loss, scores, _ = dpo_loss_and_grad(params, reference, config, batch, beta, half)
    weights = token_weights(scores, rows.loss_mask, beta, half)
    ours = weighted_nll_grad(target_nll(logits, rows.target_ids)[1], rows.target_ids, weights)

    t_logits = torch.tensor(logits, requires_grad=True)
    logp = torch.log_softmax(t_logits, dim=-1).gather(-1, torch.tensor(rows.target_ids)[..., None])[..., 0]
    seq = (logp * torch.tensor(rows.loss_mask.astype(np.float64))).sum(-1)
    ref = torch.tensor(logps_of(reference, config, batch))
    z = beta * ((seq[:half] - ref[:half]) - (seq[half:] - ref[half:]))
    t_loss = -torch.nn.functional.logsigmoid(z).mean()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(ours, t_logits.grad.numpy(), rtol=1e-9, atol=1e-15)


def test_accumulated_micro_batches_step_like_one_batch(tiny) -> None:
    config, params = tiny
    pairs = [as_pair(r) for r in random_pairs(np.random.default_rng(31), 6, TINY.vocab_size, longest=7)]
    reference = perturbed(params, 1)
    whole = {name: value.copy() for name, value in params.items()}
    split = {name: value.copy() for name, value in params.items()}
    one = dpo_step(whole, reference, config, AdamW(whole, eps=1.0), [collate_pairs(pairs)], 0.5, 0.0, 1e-2)
    micro = [collate_pairs(pairs[:2]), collate_pairs(pairs[2:])]
    two = dpo_step(split, reference, config, AdamW(split, eps=1.0), micro, 0.5, 0.0, 1e-2)
    assert two.loss == pytest.approx(one.loss, rel=1e-12) and two.margin == pytest.approx(one.margin, rel=1e-12)
    assert two.grad_norm == pytest.approx(one.grad_norm, rel=1e-12) and (one.pairs, two.pairs) == (6, 6)
    for name in whole:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-10, atol=1e-12)


def test_same_seed_same_run_bit_for_bit(fixture_pairs: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**vars(FIXTURE_RUN), "steps": 10, "seed": 3, "eval_rows": 8})
    first = train(fixture_pairs, tmp_path / "a", config)
    second = train(fixture_pairs, tmp_path / "b", config)
    keys = ("step", "loss", "margin", "accuracy", "counted_targets", "tokens", "lr", "grad_norm")
    runs = [[{k: m[k] for k in keys} for m in read_metrics(tmp_path / name)] for name in ("a", "b")]
    assert runs[0] == runs[1] and first["eval"] == second["eval"]
    params_a, _ = load(tmp_path / "a" / WEIGHTS_NAME)
    params_b, _ = load(tmp_path / "b" / WEIGHTS_NAME)
    assert all(np.array_equal(params_a[name], params_b[name]) for name in params_a)
    train(fixture_pairs, tmp_path / "c", TrainConfig(**{**vars(config), "seed": 4}))
    assert [m["loss"] for m in read_metrics(tmp_path / "c")][1:] != [m["loss"] for m in runs[0]][1:]


def test_pairs_are_read_in_order_cut_and_skipped_like_rows(tmp_path: Path) -> None:
    rows = [
        make_pair([1, 2], [3, 4, 5, 6], [7], index=0),  # chosen longer than 4 positions: cut
        make_pair([1, 2, 3, 4, 5], [6], [7, 8], index=1),  # the prompt fills 4 positions: nothing counts, skipped
        make_pair([9], [3], [4], index=2),
    ]
    shards = open_shards(write_pair_shards(tmp_path / "pairs", rows, 13, rows_per_shard=2), pairs=True)
    pairs = list(iter_pairs(shards))
    assert [p.index for p in pairs] == [0, 1, 2] and pairs[2].chosen.source == "pairs.jsonl:3"
    assert pairs[0].chosen.input_ids.tolist() == [1, 2, 3, 4, 5] and pairs[0].rejected.target_ids.tolist() == [2, 7]
    assert pairs[0].chosen.position_ids.tolist() == [0, 1, 2, 3, 4]
    stats = StreamStats()
    kept = list(fitted(pairs, seq_len=4, vocab_size=13, stats=stats))
    assert [p.index for p in kept] == [0, 2]
    assert kept[0].chosen.num_tokens == 4 and kept[0].rejected.num_tokens == 2
    assert (stats.rows, stats.rows_cut, stats.rows_skipped, stats.targets_cut) == (3, 2, 1, 1 + 3)


def test_cli_trains_dpo_and_refuses_the_wrong_layout(fixture_pairs: Path, demo_shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", str(fixture_pairs), "--out", str(tmp_path / "run"), "--objective", "dpo", "--beta", "0.2"]
    options = ["--steps", "3", "--batch-size", "4", "--layers", "1", "--d-model", "16", "--eval-rows", "8"]
    ok = runner.invoke(main, [*args, *options])
    assert ok.exit_code == 0, ok.output
    assert "log 2 = 0.6931" in ok.output and "margin 0.0000 ->" in ok.output and "(beta 0.2)" in ok.output
    assert json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["train"]["beta"] == 0.2
    for args, message in (
        ([str(fixture_pairs)], "has the pairs layout, not rows or packed: train preference pairs with --objective dpo"),
        ([str(demo_shards), "--objective", "dpo"], "has the rows layout, not pairs"),
        ([str(fixture_pairs), "--objective", "dpo", "--loss-norm", "sequence"], "--loss-norm is SFT's"),
        ([str(fixture_pairs), "--objective", "dpo", "--beta", "0"], "--beta must be positive"),
    ):
        bad = runner.invoke(main, ["train", *args, "--out", str(tmp_path / "bad"), "--steps", "1"])
        assert bad.exit_code == 2 and message in bad.output, bad.output
