"""The training loop: stream batches, forward, masked loss, backward, clip, AdamW; log every step.

Two objectives: `sft`, the masked mean cross-entropy of rows (`loss.py`), and `dpo`, the preference loss of pairs
against the frozen initial weights (`dpo.py`). Both run the same model, optimizer, schedule and loop.

A run writes into RUN_DIR:
    metrics.jsonl   one line per step: step, epoch, loss, counted_targets, tokens, tokens_per_s, lr, grad_norm
                    (dpo: also margin, accuracy, chosen_reward, rejected_reward, pairs)
    loss.svg        the loss curve
    model.npz       the weights (and the model config), loadable by `lossmask explain --run`
    run.json        the configs, what the data stream kept and cut, and the loss on a fixed set of rows
                    (the first --eval-rows) before and after training

Deterministic: the seed fixes the initial weights and the shuffle, and nothing else is random, so the same seed
and the same shards give the same losses and weights, bit for bit (tokens_per_s is the only clock reading).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .. import storage
from ..errors import SetupError
from .batches import Batch, StreamStats, collate, collate_pairs, first_rows, training_batches
from .dpo import dpo_step, evaluate_pairs
from .loss import LOSS_NORMS, count_sequences, loss_weights, masked_cross_entropy
from .model import ModelConfig, Params, backward, count_params, forward, init_params, save
from .optim import AdamW, clip_grad_norm, learning_rate
from .plot import write_loss_curve
from .shards import Example, iter_examples, iter_pairs, open_shards, vocab_size_of

METRICS_NAME = "metrics.jsonl"
CURVE_NAME = "loss.svg"
WEIGHTS_NAME = "model.npz"
RUN_NAME = "run.json"
OBJECTIVES = ("sft", "dpo")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    loss_norm: str = "token"
    accum_steps: int = 1
    shuffle_buffer: int = 1024
    eval_rows: int = 256
    layers: int = 2
    d_model: int = 64
    heads: int = 4
    dtype: str = "float32"
    threads: int = 1  # BLAS threads: 1 is fastest for a model this small, and 3-12x faster on a busy machine
    objective: str = "sft"  # sft: rows, masked cross-entropy; dpo: preference pairs (--batch-size counts pairs)
    beta: float = 0.1  # dpo: how far from the reference the policy may move for a given preference

    @property
    def dpo(self) -> bool:
        return self.objective == "dpo"

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.seq_len, self.accum_steps, self.threads) < 1:
            raise SetupError("--steps, --batch-size, --seq-len, --accum-steps and --threads must be at least 1")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.eval_rows < 0:
            raise SetupError("--lr must be positive; --warmup, --weight-decay, --grad-clip, --eval-rows not negative")
        if self.loss_norm not in LOSS_NORMS:
            raise SetupError(f"--loss-norm must be one of {', '.join(LOSS_NORMS)}, not {self.loss_norm!r}")
        if self.objective not in OBJECTIVES:
            raise SetupError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.beta <= 0:
            raise SetupError("--beta must be positive")
        if self.dpo and self.loss_norm != "token":
            raise SetupError("--loss-norm is SFT's: DPO sums log p over each side's counted targets")

    def model_config(self, vocab_size: int) -> ModelConfig:
        config = ModelConfig(
            vocab_size=vocab_size,
            block_size=self.seq_len,
            n_layer=self.layers,
            n_head=self.heads,
            d_model=self.d_model,
            dtype=self.dtype,
        )
        config.validate()
        return config


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # real positions read
    targets: int  # counted targets scored

    def metrics(self) -> dict[str, float | int]:
        return {"loss": self.loss, "counted_targets": self.targets, "tokens": self.tokens}


def train_step(
    params: Params,
    model_config: ModelConfig,
    optimizer: AdamW,
    micro_batches: list[Batch],
    loss_norm: str,
    grad_clip: float,
    lr: float,
) -> StepResult:
    """One optimizer step over one or more micro-batches (gradient accumulation).

    The weights of every target come from the whole step's totals (targets, or sequences), so the summed
    micro-batch gradients are the gradient of the step's loss as if it were one batch (see loss.py).
    """
    num_targets = sum(b.num_loss_tokens for b in micro_batches)
    num_sequences = sum(count_sequences(b.loss_mask, b.segment_ids) for b in micro_batches)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    loss = 0.0
    for batch in micro_batches:
        logits, cache = forward(params, model_config, batch.input_ids, batch.position_ids, batch.segment_ids)
        weights = loss_weights(batch.loss_mask, batch.segment_ids, loss_norm, num_targets, num_sequences)
        micro_loss, _, dlogits = masked_cross_entropy(logits, batch.target_ids, weights)
        for name, g in backward(params, model_config, cache, dlogits).items():
            grads[name] += g
        loss += micro_loss
    grad_norm = clip_grad_norm(grads, grad_clip)
    optimizer.step(params, grads, lr)
    return StepResult(loss, grad_norm, sum(b.num_tokens for b in micro_batches), num_targets)


def evaluate(params: Params, model_config: ModelConfig, examples: list[Example], batch_size: int = 16) -> float | None:
    """Token-level mean of -log p over every counted target of `examples` (None when there are none)."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        logits, _ = forward(params, model_config, batch.input_ids, batch.position_ids, batch.segment_ids)
        weights = batch.loss_mask.astype(np.float64)
        _, nll, _ = masked_cross_entropy(logits, batch.target_ids, weights)
        total += float(nll.astype(np.float64)[batch.loss_mask.astype(bool)].sum())
        count += batch.num_loss_tokens
    return total / count if count else None


def prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SetupError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)


def train(
    shards_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train on the shards in `shards_dir` (a folder, or an s3:// prefix), write the run into `out_dir` (a local
    folder), return the run summary (run.json)."""
    config.validate()
    storage.refuse_url(str(out_dir), "--out")
    with threadpool_limits(limits=config.threads, user_api="blas"):
        return _train(shards_dir, out_dir, config, on_step)


def _train(
    shards_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    wall_started = time.perf_counter()  # the whole run: reading shards, eval before and after, saving
    shards = open_shards(shards_dir, pairs=config.dpo)
    model_config = config.model_config(vocab_size_of(shards))
    out = Path(out_dir)
    prepare_out_dir(out)

    init_seed, data_seed = np.random.SeedSequence(config.seed).spawn(2)
    params = init_params(model_config, np.random.default_rng(init_seed))
    reference = {name: p.copy() for name, p in params.items()} if config.dpo else {}  # DPO's, frozen: never stepped
    optimizer = AdamW(params, weight_decay=config.weight_decay)
    stats = StreamStats()
    read, stack = (iter_pairs, collate_pairs) if config.dpo else (iter_examples, collate)
    rng = np.random.default_rng(data_seed)
    batches = training_batches(
        shards, config.batch_size, config.seq_len, rng, config.shuffle_buffer, stats, read, stack
    )
    eval_set = first_rows(shards, config.eval_rows, config.seq_len, read)

    def evaluate_now() -> Any:
        if config.dpo:
            return evaluate_pairs(params, reference, model_config, eval_set, config.beta)
        return evaluate(params, model_config, eval_set)

    eval_before = evaluate_now()

    started = time.perf_counter()
    steps: list[int] = []
    losses: list[float] = []
    epoch = 0
    with open(out / METRICS_NAME, "w", encoding="utf-8") as metrics:
        for step in range(1, config.steps + 1):
            step_started = time.perf_counter()
            micro: list[Any] = []  # Batch (sft) or PairBatch (dpo)
            for _ in range(config.accum_steps):
                epoch, batch = next(batches)
                micro.append(batch)
            lr = learning_rate(step, config.lr, config.steps, config.warmup, config.min_lr_ratio)
            if config.dpo:
                result: Any = dpo_step(
                    params, reference, model_config, optimizer, micro, config.beta, config.grad_clip, lr
                )
            else:
                result = train_step(params, model_config, optimizer, micro, config.loss_norm, config.grad_clip, lr)
            seconds = time.perf_counter() - step_started
            record = {
                "step": step,
                "epoch": epoch,
                **result.metrics(),
                "tokens_per_s": result.tokens / seconds if seconds > 0 else 0.0,
                "lr": lr,
                "grad_norm": result.grad_norm,
            }
            metrics.write(json.dumps(record) + "\n")
            steps.append(step)
            losses.append(result.loss)
            if on_step is not None:
                on_step(record)
    elapsed = time.perf_counter() - started
    eval_after = evaluate_now()

    save(out / WEIGHTS_NAME, params, model_config)
    log_vocab = math.log(model_config.vocab_size)
    if config.dpo:
        title = f"lossmask train --objective dpo: DPO loss per step (beta {config.beta:g})"
        write_loss_curve(
            out / CURVE_NAME, steps, losses, reference=math.log(2), title=title, label="log 2 (policy = reference)"
        )
        evaluation = {
            "pairs": len(eval_set),
            "counted_targets": sum(p.num_loss_tokens for p in eval_set),
            "before": eval_before,
            "after": eval_after,
        }
    else:
        title = f"lossmask train: masked mean loss per step ({config.loss_norm} norm)"
        write_loss_curve(out / CURVE_NAME, steps, losses, reference=log_vocab, title=title)
        evaluation = {
            "rows": len(eval_set),
            "counted_targets": sum(e.num_loss_tokens for e in eval_set),
            "loss_before": eval_before,
            "loss_after": eval_after,
        }
    summary = {
        "shards": str(shards.directory),
        "model": model_config.to_dict(),
        "parameters": count_params(params),
        "train": asdict(config),
        "data": {**stats.to_dict(), "epochs_started": epoch + 1},
        "eval": evaluation,
        "log_vocab": log_vocab,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "seconds": elapsed,  # the training steps only
        "seconds_per_step": elapsed / config.steps,
        "wall_seconds": time.perf_counter() - wall_started,  # the whole run but writing run.json
        "files": {"metrics": METRICS_NAME, "curve": CURVE_NAME, "weights": WEIGHTS_NAME},
    }
    (out / RUN_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
