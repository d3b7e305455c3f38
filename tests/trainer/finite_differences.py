"""The finite-difference check every hand-written gradient is held to (SFT's and DPO's)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from lossmask.trainer.model import Params

EPS = 1e-5


def assert_gradients_match(
    params: Params, grads: Params, loss_of: Callable[[Params], float], tolerance: float = 1e-6
) -> None:
    """Analytic `grads` = central finite differences of `loss_of` for every entry of every parameter tensor, to a
    relative error (over each tensor) below `tolerance`; a tensor with no gradient at all fails too."""
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
        assert relative < tolerance, f"{name}: relative error {relative:.2e}"
