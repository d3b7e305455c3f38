"""AdamW, gradient clipping and the learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from lossmask.trainer.optim import AdamW, clip_grad_norm, learning_rate


def test_first_adamw_step_moves_each_weight_by_lr_against_its_gradient_sign() -> None:
    """At step 1, m_hat / sqrt(v_hat) = g / |g|: every weight moves by lr (plus decay on matrices only)."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    before = {name: value.copy() for name, value in params.items()}
    grads = {name: rng.standard_normal(value.shape) for name, value in params.items()}
    lr, decay = 0.01, 0.1
    AdamW(params, weight_decay=decay, eps=0.0).step(params, grads, lr)
    expected_w = before["w"] * (1 - lr * decay) - lr * np.sign(grads["w"])
    np.testing.assert_allclose(params["w"], expected_w, rtol=1e-12)
    np.testing.assert_allclose(params["b"], before["b"] - lr * np.sign(grads["b"]), rtol=1e-12)


def test_adamw_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}
    tensors = {name: torch.tensor(value.copy(), requires_grad=True) for name, value in params.items()}
    reference = torch.optim.AdamW(
        [{"params": [tensors["w"]], "weight_decay": 0.1}, {"params": [tensors["b"]], "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    ours = AdamW(params, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for step in range(1, 6):
        grads = {name: rng.standard_normal(value.shape) for name, value in params.items()}
        lr = 3e-3 * step / 5
        for group in reference.param_groups:
            group["lr"] = lr
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        reference.step()
        ours.step(params, grads, lr)
        for name, tensor in tensors.items():
            np.testing.assert_allclose(params[name], tensor.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_adamw_keeps_float32_weights_float32() -> None:
    params = {"w": np.ones((2, 2), np.float32)}
    AdamW(params).step(params, {"w": np.full((2, 2), 0.5, np.float32)}, 1e-3)
    assert params["w"].dtype == np.float32


def test_clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() -> None:
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    total = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    assert total == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(grads["a"] / grads["b"][0], [0.75, 0.0])
    small = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    rates = [learning_rate(step, 1.0, total_steps=100, warmup=10) for step in range(1, 101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(0.1)
    assert learning_rate(5, 2.0, total_steps=10, warmup=0) < 2.0
