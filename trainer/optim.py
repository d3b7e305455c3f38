"""AdamW (decoupled weight decay), gradient clipping by global norm, and the learning-rate schedule.

Weight decay applies to matrices (embeddings, projections), not to biases or norm gains: nanoGPT's rule.
The update is torch.optim.AdamW's, to the letter (checked against it in the tests when torch is present):

    p <- p - lr * wd * p
    m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math

import numpy as np

Params = dict[str, np.ndarray]


class AdamW:
    def __init__(
        self,
        params: Params,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ):
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.decays = {name: p.ndim >= 2 for name, p in params.items()}

    def step(self, params: Params, grads: Params, lr: float) -> None:
        """Update `params` in place, in their own dtype."""
        self.step_count += 1
        correction1 = 1.0 - self.beta1**self.step_count
        correction2 = 1.0 - self.beta2**self.step_count
        for name, p in params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            if self.decays[name]:
                p *= 1.0 - lr * self.weight_decay
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            denom = np.sqrt(v) / math.sqrt(correction2) + self.eps
            p -= (lr / correction1) * (m / denom)


def clip_grad_norm(grads: Params, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most `max_norm`. Returns the norm before."""
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= scale
    return total


def learning_rate(step: int, max_lr: float, total_steps: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio * max_lr` at the last step (1-based)."""
    if step <= warmup:
        return max_lr * step / warmup
    if total_steps <= warmup:
        return max_lr
    progress = (step - warmup) / (total_steps - warmup)
    return max_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
