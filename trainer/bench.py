"""Step time of the reference trainer on full synthetic rows: `python -m lossmask.trainer.bench`.

One step = forward, masked loss, backward, clipping, AdamW, on a (B, T) batch with every position real (no
padding) and half the targets counted. The batch is made once, so only the model is timed. Prints the median
and best step time and tokens per second. For a report, not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import click
import numpy as np
from threadpoolctl import threadpool_limits

from .batches import Batch
from .model import DTYPES, ModelConfig, init_params
from .optim import AdamW
from .train import train_step


@dataclass
class BenchResult:
    step_seconds: list[float]
    tokens_per_step: int

    @property
    def median(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def best(self) -> float:
        return min(self.step_seconds)


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, rng: np.random.Generator) -> Batch:
    shape = (batch_size, seq_len)
    return Batch(
        input_ids=rng.integers(0, vocab_size, shape),
        target_ids=rng.integers(0, vocab_size, shape),
        loss_mask=(rng.random(shape) < 0.5).astype(np.uint8),
        position_ids=np.broadcast_to(np.arange(seq_len), shape).copy(),
        segment_ids=np.zeros(shape, dtype=np.int32),
    )


def bench(config: ModelConfig, batch_size: int, steps: int, warmup: int = 2, threads: int = 1) -> BenchResult:
    rng = np.random.default_rng(0)
    params = init_params(config, rng)
    optimizer = AdamW(params)
    batch = synthetic_batch(batch_size, config.block_size, config.vocab_size, rng)
    times = []
    with threadpool_limits(limits=threads, user_api="blas"):
        for step in range(warmup + steps):
            started = time.perf_counter()
            train_step(params, config, optimizer, [batch], "token", grad_clip=1.0, lr=1e-3)
            if step >= warmup:
                times.append(time.perf_counter() - started)
    return BenchResult(times, batch.num_tokens)


@click.command()
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--seq-len", type=int, default=512, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--d-model", type=int, default=64, show_default=True)
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--vocab", type=int, default=1024, show_default=True, help="The fixture tokenizer's size.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps (after 2 untimed).")
@click.option("--threads", type=int, default=1, show_default=True, help="BLAS threads.")
def main(
    batch_size: int,
    seq_len: int,
    layers: int,
    d_model: int,
    heads: int,
    vocab: int,
    dtype: str,
    steps: int,
    threads: int,
) -> None:
    config = ModelConfig(vocab, seq_len, n_layer=layers, n_head=heads, d_model=d_model, dtype=dtype)
    config.validate()
    result = bench(config, batch_size, steps, threads=threads)
    click.echo(
        f"batch {batch_size} x {seq_len}, {layers} layers, d_model {d_model}, {heads} heads, vocab {vocab}, "
        f"{dtype}, {threads} BLAS thread(s), {steps} steps"
    )
    click.echo(
        f"step: median {1000 * result.median:.1f} ms, best {1000 * result.best:.1f} ms; "
        f"{result.tokens_per_step / result.median:,.0f} tokens/s at the median"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
