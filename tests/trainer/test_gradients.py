"""Every hand-written backward pass, checked against central finite differences on a tiny float64 model."""

from __future__ import annotations

import numpy as np
import pytest
from lossmask.trainer.batches import collate
from lossmask.trainer.loss import loss_weights, masked_cross_entropy
from lossmask.trainer.model import backward, forward

from .finite_differences import assert_gradients_match

pytestmark = pytest.mark.slow  # one pair of forward passes per parameter entry


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
    assert_gradients_match(params, backward(params, config, cache, dlogits), loss_of)
