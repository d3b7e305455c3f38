"""The loss function on its own: the lesson's numbers, the masked mean, both norms, and torch as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lossmask.trainer.loss import count_sequences, loss_weights, masked_cross_entropy


def one_target_loss(p: float) -> float:
    """The loss of a single counted target that the model gives probability p (logits = log of the probabilities)."""
    probs = np.array([p, 1.0 - p])
    logits = np.log(probs)[None, None, :]  # (1, 1, 2)
    weights = loss_weights(np.ones((1, 1), np.uint8), np.zeros((1, 1), np.int32))
    loss, _, _ = masked_cross_entropy(logits, np.zeros((1, 1), np.int64), weights)
    return loss


@pytest.mark.parametrize(("p", "expected"), [(0.78, 0.248), (0.99, 0.010), (0.01, 4.605)])
def test_lesson_numbers(p: float, expected: float) -> None:
    assert round(one_target_loss(p), 3) == expected


@pytest.mark.parametrize("vocab", [2, 50, 1024])
def test_uniform_prediction_costs_log_vocab(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    logits = np.full((3, 5, vocab), 0.7)  # equal logits: uniform over V tokens
    targets = rng.integers(0, vocab, (3, 5))
    mask = (rng.random((3, 5)) < 0.5).astype(np.uint8)
    mask[0, 0] = 1
    loss, nll, _ = masked_cross_entropy(logits, targets, loss_weights(mask, np.zeros((3, 5), np.int32)))
    assert loss == pytest.approx(math.log(vocab), rel=1e-12)
    np.testing.assert_allclose(nll, math.log(vocab), rtol=1e-12)


def test_loss_is_the_mean_over_counted_targets_only() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 6, 9))
    targets = rng.integers(0, 9, (2, 6))
    mask = np.array([[0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 1, 1]], np.uint8)
    loss, nll, _ = masked_cross_entropy(logits, targets, loss_weights(mask, np.zeros((2, 6), np.int32)))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    by_hand = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(nll, by_hand, rtol=1e-12)
    assert loss == pytest.approx(by_hand[mask == 1].sum() / mask.sum(), rel=1e-12)


def test_sequence_norm_weights_each_document_equally() -> None:
    # Row 0 holds two documents (segments 0 and 1), row 1 one document and padding.
    segments = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, -1, -1]], np.int32)
    mask = np.array([[1, 1, 1, 0, 0, 1], [0, 1, 0, 1, 0, 0]], np.uint8)
    assert count_sequences(mask, segments) == 3
    weights = loss_weights(mask, segments, "sequence")
    expected = np.array([[1 / 3, 1 / 3, 1 / 3, 0, 0, 1], [0, 1 / 2, 0, 1 / 2, 0, 0]]) / 3
    np.testing.assert_allclose(weights, expected, rtol=1e-15)
    token = loss_weights(mask, segments, "token")
    np.testing.assert_allclose(token, mask / 6, rtol=1e-15)


def test_weights_from_step_totals_make_accumulation_equal_one_batch() -> None:
    """Split a step into micro-batches: weights from the step's totals give the one-batch loss; per-batch means
    averaged do not (when micro-batches hold different numbers of counted targets), which is why train_step
    passes the totals."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 5, 7))
    targets = rng.integers(0, 7, (4, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], np.uint8)
    segments = np.zeros((4, 5), np.int32)
    for norm in ("token", "sequence"):
        whole, _, whole_grad = masked_cross_entropy(logits, targets, loss_weights(mask, segments, norm))
        totals = {"num_targets": int(mask.sum()), "num_sequences": count_sequences(mask, segments)}
        parts = [slice(0, 2), slice(2, 4)]
        summed = [
            masked_cross_entropy(logits[s], targets[s], loss_weights(mask[s], segments[s], norm, **totals))
            for s in parts
        ]
        assert sum(loss for loss, _, _ in summed) == pytest.approx(whole, rel=1e-13)
        np.testing.assert_allclose(np.concatenate([g for _, _, g in summed]), whole_grad, rtol=1e-13, atol=1e-16)
    naive = np.mean([masked_cross_entropy(logits[s], targets[s], loss_weights(mask[s], segments[s]))[0] for s in parts])
    whole_token = masked_cross_entropy(logits, targets, loss_weights(mask, segments))[0]
    assert abs(naive - whole_token) > 1e-3


def test_gradient_of_uncounted_targets_is_exactly_zero() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((1, 4, 6))
    mask = np.array([[1, 0, 1, 0]], np.uint8)
    _, _, grad = masked_cross_entropy(
        logits, rng.integers(0, 6, (1, 4)), loss_weights(mask, np.zeros((1, 4), np.int32))
    )
    assert np.all(grad[0, [1, 3]] == 0) and not np.any(np.signbit(grad[0, [1, 3]]))
    assert np.all(np.abs(grad[0, [0, 2]]).sum(-1) > 0)


def test_masked_mean_equals_torch_cross_entropy_with_ignore_index() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    batch, positions, vocab = 3, 11, 17
    logits = rng.standard_normal((batch, positions, vocab)) * 3
    targets = rng.integers(0, vocab, (batch, positions))
    mask = (rng.random((batch, positions)) < 0.4).astype(np.uint8)
    mask[1, 4] = 1
    loss, _, grad = masked_cross_entropy(logits, targets, loss_weights(mask, np.zeros((batch, positions), np.int32)))

    torch_logits = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(np.where(mask == 1, targets, -100))
    expected = torch.nn.functional.cross_entropy(
        torch_logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100, reduction="mean"
    )
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(grad, torch_logits.grad.numpy(), rtol=1e-10, atol=1e-15)
