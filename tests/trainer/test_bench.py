"""The benchmark times real training steps on full rows (what it reports, not how fast: no timed assertions)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from lossmask.trainer.bench import bench, main, synthetic_batch
from lossmask.trainer.model import ModelConfig


def test_bench_times_the_requested_steps_on_unpadded_rows() -> None:
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, d_model=8)
    result = bench(config, batch_size=3, steps=4, warmup=1)
    assert len(result.step_seconds) == 4 and result.best > 0
    assert result.tokens_per_step == 3 * 16
    batch = synthetic_batch(3, 16, 50, np.random.default_rng(0))
    assert batch.num_tokens == 48 and 0 < batch.num_loss_tokens < 48


def test_bench_command_reports_step_time() -> None:
    args = ["--batch-size", "2", "--seq-len", "8", "--layers", "1", "--d-model", "8", "--heads", "2", "--steps", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "batch 2 x 8, 1 layers, d_model 8" in result.output and "ms" in result.output
