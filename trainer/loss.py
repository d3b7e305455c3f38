"""The lesson's loss: -log p(target) at every position, averaged over the targets that count.

    loss = sum over counted targets of -log p(target) / number of counted targets        (--loss-norm token)

A target with loss_mask 0 gets weight exactly 0: it adds nothing to the loss and nothing to any gradient, so
the prompt is read but never taught. With p(target) = 0.78 a target costs -log 0.78 = 0.248; a model that
predicts uniformly over V tokens costs log V on every target.

The loss is written as sum(weight * -log p) with one weight per target, so one function serves both norms and
gradient accumulation (the weights of a step's micro-batches are computed from the whole step's totals):

- `token`: weight = 1 / (counted targets in the step). Every counted token counts the same, wherever it sits.
  Summing micro-batch losses with these weights equals the loss of the whole step in one batch, however the
  step is split. (Averaging each micro-batch's own mean instead would over-weight tokens in micro-batches with
  few counted targets, and the result would depend on how the step was split.)
- `sequence`: weight = 1 / (targets of its sequence) / (sequences in the step). Each sequence counts the same,
  so a long answer weighs as much as a short one in total. A sequence is one document: a (row, segment) pair,
  so packed rows give the same loss as unpacked ones.
"""

from __future__ import annotations

import numpy as np

LOSS_NORMS = ("token", "sequence")


def sequence_ids(segment_ids: np.ndarray) -> np.ndarray:
    """One integer per document of the batch: (row, segment) -> id, for segment_ids (B, T); padding gets its own."""
    rows = np.arange(segment_ids.shape[0], dtype=np.int64)[:, None]  # (B, 1)
    width = int(segment_ids.max()) + 2 if segment_ids.size else 1
    return rows * width + (segment_ids.astype(np.int64) + 1)  # (B, T)


def count_sequences(loss_mask: np.ndarray, segment_ids: np.ndarray) -> int:
    """How many documents in the batch have at least one counted target."""
    return int(np.unique(sequence_ids(segment_ids)[loss_mask.astype(bool)]).size)


def loss_weights(
    loss_mask: np.ndarray,
    segment_ids: np.ndarray,
    norm: str = "token",
    num_targets: int | None = None,
    num_sequences: int | None = None,
) -> np.ndarray:
    """The weight of each target (B, T) in the loss: 0 where loss_mask is 0, summing to 1 over a whole step.

    `num_targets` / `num_sequences` are the step's totals when it is split into micro-batches (default: this
    batch's own). Float64, so that the weights themselves add no rounding of their own.
    """
    counted = loss_mask.astype(bool)  # (B, T)
    weights = np.zeros(loss_mask.shape, dtype=np.float64)
    if norm == "token":
        total = int(counted.sum()) if num_targets is None else num_targets
        weights[counted] = 1.0 / max(total, 1)
    elif norm == "sequence":
        total = count_sequences(loss_mask, segment_ids) if num_sequences is None else num_sequences
        _, inverse, per_sequence = np.unique(
            sequence_ids(segment_ids)[counted], return_inverse=True, return_counts=True
        )
        weights[counted] = 1.0 / per_sequence[inverse] / max(total, 1)
    else:
        raise ValueError(f"loss norm must be one of {', '.join(LOSS_NORMS)}, not {norm!r}")
    return weights


def masked_cross_entropy(
    logits: np.ndarray, target_ids: np.ndarray, weights: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """logits (B, T, V), target_ids (B, T), weights (B, T) -> loss, -log p(target) (B, T), dloss/dlogits (B, T, V).

    -log p is computed as logsumexp(logits) - logit[target] (never log of a rounded probability), for every
    position; only weighted positions enter the loss. The gradient is weight * (softmax - onehot(target)), which
    is exactly 0 (not -0) wherever the weight is 0. Weights may be negative (DPO's rejected side).
    """
    weights = weights.astype(logits.dtype)
    nll, probs = target_nll(logits, target_ids)
    loss = float(np.where(weights != 0, weights * nll, 0.0).sum())
    return loss, nll, weighted_nll_grad(probs, target_ids, weights)


def target_nll(logits: np.ndarray, target_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-log p(target) (B, T) at every position, and the softmax (B, T, V) its gradient needs."""
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (B, T, V), max 0 per position
    exp = np.exp(shifted)  # (B, T, V)
    total = exp.sum(axis=-1)  # (B, T)
    target_logit = np.take_along_axis(shifted, target_ids[..., None], axis=-1)[..., 0]  # (B, T)
    return np.log(total) - target_logit, exp / total[..., None]


def weighted_nll_grad(probs: np.ndarray, target_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """d(sum of weight * -log p(target))/dlogits = weight * (softmax - onehot(target)), (B, T, V)."""
    weights = weights.astype(probs.dtype)
    dlogits = probs * weights[..., None]  # (B, T, V)
    rows, cols = np.indices(target_ids.shape)
    dlogits[rows, cols, target_ids] -= weights
    return dlogits
