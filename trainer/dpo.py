"""DPO (Rafailov et al., 2023) on pair shards: prefer the chosen completion to the rejected one, relative to a frozen
reference model (the initial weights), with the hand-written backward of the SFT model.

For each pair, the sequence log-probability of a side is the sum of log p(target) over its counted targets (the
completion and its stop; the prompt never counts), under the policy (π) and under the reference (π_ref):

    reward_c = β (log π(c) - log π_ref(c))        reward_r = β (log π(r) - log π_ref(r))
    z = reward_c - reward_r                       loss = mean over pairs of -log σ(z) = softplus(-z)

At step 0 the policy is the reference, so every z is exactly 0 and the loss is exactly log 2. The margin (the
mean of z) is how much more the policy prefers the chosen side than the reference did; accuracy is the share of
pairs with z > 0.

The backward needs nothing new. log π(side) = -Σ mask · nll, so the loss is a weighted sum of the same per-token
-log p the SFT loss sums, with one weight per token:

    dloss/dz = -σ(-z) / N        (N: pairs in the whole step, so accumulation is exact as for SFT)
    weight on a chosen target   = -dloss/dlog π(c) · mask = +β σ(-z) / N · mask    (push its nll down)
    weight on a rejected target = -dloss/dlog π(r) · mask = -β σ(-z) / N · mask    (push its nll up)

and `masked_cross_entropy` with these weights gives dloss/dlogits, which `model.backward` takes as for SFT. A
target with loss_mask 0 (the prompt, padding) gets weight exactly 0, hence exactly no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .batches import PairBatch, collate_pairs
from .loss import target_nll, weighted_nll_grad
from .model import ModelConfig, Params, backward, forward
from .optim import AdamW, clip_grad_norm
from .shards import Pair


@dataclass
class PairScores:
    """The DPO quantities of B pairs, each (B,) float64."""

    chosen_rewards: np.ndarray  # β (log π(c) - log π_ref(c))
    rejected_rewards: np.ndarray  # β (log π(r) - log π_ref(r))

    @property
    def margins(self) -> np.ndarray:
        return self.chosen_rewards - self.rejected_rewards  # z

    @property
    def losses(self) -> np.ndarray:
        return np.logaddexp(0.0, -self.margins)  # -log σ(z), without overflow for any z

    def gradient(self, beta: float, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """dloss/dlog π(c) and dloss/dlog π(r) per pair, for the loss averaged over `num_pairs` pairs."""
        dz = -np.exp(-np.logaddexp(0.0, self.margins)) / num_pairs  # -σ(-z) / N
        return beta * dz, -beta * dz


def sequence_logps(nll: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Sum of log p(target) over each row's counted targets: nll (R, T), loss_mask (R, T) -> (R,) float64."""
    return -np.where(loss_mask.astype(bool), nll.astype(np.float64), 0.0).sum(axis=-1)


def logps_of(params: Params, config: ModelConfig, batch: PairBatch) -> np.ndarray:
    """Sequence log-probs of the 2B rows (chosen sides, then rejected sides): a forward pass, no backward."""
    rows = batch.rows
    logits, _ = forward(params, config, rows.input_ids, rows.position_ids, rows.segment_ids)
    return sequence_logps(target_nll(logits, rows.target_ids)[0], rows.loss_mask)


def scores_of(policy: np.ndarray, reference: np.ndarray, beta: float) -> PairScores:
    """Sequence log-probs of 2B rows under both models -> the scores of their B pairs."""
    rewards = beta * (policy - reference)  # (2B,)
    half = rewards.size // 2
    return PairScores(rewards[:half], rewards[half:])


def token_weights(scores: PairScores, loss_mask: np.ndarray, beta: float, num_pairs: int) -> np.ndarray:
    """The weight of each target's -log p in the DPO loss, (2B, T): -dloss/dlog π of its side where the target
    counts, exactly 0 where it does not (the prompt, padding)."""
    chosen, rejected = scores.gradient(beta, num_pairs)  # dloss/dlog π per pair, (B,) each
    weights = np.zeros(loss_mask.shape, dtype=np.float64)
    counted = loss_mask.astype(bool)
    weights[counted] = np.broadcast_to(-np.concatenate([chosen, rejected])[:, None], loss_mask.shape)[counted]
    return weights


def dpo_loss_and_grad(
    params: Params, reference: Params, config: ModelConfig, batch: PairBatch, beta: float, num_pairs: int
) -> tuple[float, PairScores, Params]:
    """This batch's share of the step's DPO loss (its pairs' losses summed, divided by the step's `num_pairs`), its
    pairs' scores, and the gradient of that share with respect to every parameter."""
    rows = batch.rows
    logits, cache = forward(params, config, rows.input_ids, rows.position_ids, rows.segment_ids)  # (2B, T, V)
    nll, probs = target_nll(logits, rows.target_ids)  # (2B, T), (2B, T, V)
    scores = scores_of(sequence_logps(nll, rows.loss_mask), logps_of(reference, config, batch), beta)
    weights = token_weights(scores, rows.loss_mask, beta, num_pairs)  # (2B, T)
    dlogits = weighted_nll_grad(probs, rows.target_ids, weights)  # (2B, T, V)
    loss = float(scores.losses.sum()) / num_pairs
    return loss, scores, backward(params, config, cache, dlogits)


@dataclass
class DPOStepResult:
    loss: float
    grad_norm: float
    tokens: int  # real positions read, both sides
    targets: int  # counted targets scored, both sides
    pairs: int
    margin: float  # mean z: chosen reward - rejected reward
    accuracy: float  # share of pairs with z > 0
    chosen_reward: float  # mean β (log π(c) - log π_ref(c))
    rejected_reward: float

    def metrics(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "margin": self.margin,
            "accuracy": self.accuracy,
            "chosen_reward": self.chosen_reward,
            "rejected_reward": self.rejected_reward,
            "pairs": self.pairs,
            "counted_targets": self.targets,
            "tokens": self.tokens,
        }


def summarize(scores: list[PairScores]) -> dict[str, float]:
    """Mean loss, margin, accuracy and rewards over the pairs of several batches."""
    chosen = np.concatenate([s.chosen_rewards for s in scores])
    rejected = np.concatenate([s.rejected_rewards for s in scores])
    every = PairScores(chosen, rejected)
    return {
        "loss": float(every.losses.mean()),
        "margin": float(every.margins.mean()),
        "accuracy": float((every.margins > 0).mean()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
    }


def dpo_step(
    params: Params,
    reference: Params,
    config: ModelConfig,
    optimizer: AdamW,
    micro_batches: list[PairBatch],
    beta: float,
    grad_clip: float,
    lr: float,
) -> DPOStepResult:
    """One optimizer step over one or more micro-batches of pairs; the loss is the mean over the step's pairs."""
    num_pairs = sum(b.num_pairs for b in micro_batches)
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    loss = 0.0
    scores: list[PairScores] = []
    for batch in micro_batches:
        micro_loss, micro_scores, micro_grads = dpo_loss_and_grad(params, reference, config, batch, beta, num_pairs)
        for name, g in micro_grads.items():
            grads[name] += g
        loss += micro_loss
        scores.append(micro_scores)
    grad_norm = clip_grad_norm(grads, grad_clip)
    optimizer.step(params, grads, lr)
    stats = summarize(scores)
    return DPOStepResult(
        loss=loss,
        grad_norm=grad_norm,
        tokens=sum(b.num_tokens for b in micro_batches),
        targets=sum(b.num_loss_tokens for b in micro_batches),
        pairs=num_pairs,
        margin=stats["margin"],
        accuracy=stats["accuracy"],
        chosen_reward=stats["chosen_reward"],
        rejected_reward=stats["rejected_reward"],
    )


def evaluate_pairs(
    params: Params, reference: Params, config: ModelConfig, pairs: list[Pair], beta: float, batch_size: int = 16
) -> dict[str, float] | None:
    """Loss, margin, accuracy and rewards over `pairs` (None when there are none)."""
    scores = []
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start : start + batch_size])
        scores.append(scores_of(logps_of(params, config, batch), logps_of(reference, config, batch), beta))
    return summarize(scores) if scores else None
