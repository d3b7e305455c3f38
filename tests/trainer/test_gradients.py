"""Every hand-written backward pass, checked against central finite differences on a tiny float64 model."""

from __future__ import annotations

import numpy as np
import pytest
from lossmask.trainer.batches import collate
from lossmask.trainer.loss import loss_weights, masked_cross_entropy
from lossmask.trainer.model import backward, forward

pytestmark = pytest.mark.slow  # one pair of forward passes per parameter entry

EPS = 1e-5


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_analytic_gradients_match_finite_differences(tiny, make_example, pack_examples, norm: str) -> None:
    config, params = tiny
    rng = np.random.default_rng(11)
    # A packed row of two documents, and a shorter row with padding: every path of the attention mask is used.
    batch = collate([pack_examples([make_example(rng, 4), make_example(rng, 5)]), make_example(rng, 6)])
    assert (batch.segment_ids == -1).any() and (batch.segment_ids == 1).any()
    weights = loss_weights(batch.loss_mask, batch.segment_ids, norm)

    def loss_of(p: dict[str, np.ndarray]) -> float:
        logits, _ = forward(p, config, batch.input_ids, batch.position_ids, batch.segment_ids)
        return masked_cross_entropy(logits, batch.target_ids, weights)[0]

    logits, cache = forward(params, config, batch.input_ids, batch.position_ids, batch.segment_ids)
    _, _, dlogits = masked_cross_entropy(logits, batch.target_ids, weights)
    grads = backward(params, config, cache, dlogits)
    assert sorted(grads) == sorted(params)

    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            original = value[index]
            value[index] = original + EPS
            plus = loss_of(params)
            value[index] = original - EPS
            minus = loss_of(params)
            value[index] = original
            numeric[index] = (plus - minus) / (2 * EPS)
        analytic = grads[name]
        assert analytic.shape == value.shape and analytic.dtype == np.float64
        scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric))
        assert scale > 0, f"{name}: no gradient at all, the check would be empty"
        relative = np.linalg.norm(analytic - numeric) / scale
        assert relative < 1e-6, f"{name}: relative error {relative:.2e}"
