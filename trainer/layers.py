"""The ops of the model, each as a forward that returns what its backward needs, and that backward, by hand.

Shapes: B batch rows, T positions, C model width, H heads, D = C // H head width, V vocabulary. Every op works
in the dtype of its inputs (float32 for training, float64 for the gradient check). The backward of each op is
checked against central finite differences in `tests/trainer/test_gradients.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """y = x @ w + b for x (..., I), w (I, O), b (O,). The cache is x."""
    y = x @ w
    if b is not None:
        y = y + b
    return y, x


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> dx (..., I), dw (I, O), db (O,)."""
    dx = dy @ w.T
    dw = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    db = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    return dx, dw, db


def layernorm_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Normalize each position over its C features, then scale and shift: x (..., C) -> y (..., C)."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = centered * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(
    dy: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> dx, dw, db. With xhat = (x - mean) * rstd: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w."""
    xhat, rstd, w = cache
    channels = xhat.shape[-1]
    dw = (dy * xhat).reshape(-1, channels).sum(axis=0)
    db = dy.reshape(-1, channels).sum(axis=0)
    g = dy * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    t = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    return 0.5 * x * (1.0 + t), x


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    dt_dx = (1.0 - t * t) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)


def attention_mask(segment_ids: np.ndarray) -> np.ndarray:
    """Which keys each query may see: allowed[b, i, j] for segment_ids (B, T) -> (B, T, T) bool.

    Query i sees key j when j <= i (causal), both are in the same segment (packed documents never see each
    other), and j is not padding (segment -1). A padding query therefore sees nothing at all.
    """
    _, positions = segment_ids.shape
    causal = np.tril(np.ones((positions, positions), dtype=bool))  # (T, T)
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    real_key = (segment_ids >= 0)[:, None, :]  # (B, 1, T)
    return causal[None] & same_segment & real_key


def masked_softmax(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax over the last axis using only allowed entries; disallowed entries are exactly 0.

    Disallowed scores become -inf before the row max is taken, so they change neither the max nor the sum:
    what a query may not see cannot move its output by even one bit. A row with nothing allowed (a padding
    query) gives all zeros instead of 0/0.
    """
    scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.exp(scores - row_max)
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def merge_heads(t: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B, T, H * D)."""
    batch, n_head, positions, head_dim = t.shape
    return t.transpose(0, 2, 1, 3).reshape(batch, positions, n_head * head_dim)


def attention_forward(
    x: np.ndarray,
    w_qkv: np.ndarray,
    b_qkv: np.ndarray,
    w_proj: np.ndarray,
    b_proj: np.ndarray,
    allowed: np.ndarray,
    n_head: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Multi-head self-attention: x (B, T, C) -> (B, T, C), each query seeing only `allowed` keys (B, T, T)."""
    batch, positions, channels = x.shape
    head_dim = channels // n_head
    qkv, _ = linear_forward(x, w_qkv, b_qkv)  # (B, T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)  # each (B, T, C)
    q = q.reshape(batch, positions, n_head, head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)
    k = k.reshape(batch, positions, n_head, head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)
    v = v.reshape(batch, positions, n_head, head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)
    scale = 1.0 / math.sqrt(head_dim)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, H, T, T)
    att = masked_softmax(scores, allowed[:, None, :, :])  # (B, H, T, T)
    y = merge_heads(att @ v)  # (B, H, T, D) -> (B, T, C), heads side by side
    out, _ = linear_forward(y, w_proj, b_proj)  # (B, T, C)
    cache = {"x": x, "q": q, "k": k, "v": v, "att": att, "y": y, "scale": scale, "w_qkv": w_qkv, "w_proj": w_proj}
    return out, cache


def attention_backward(dout: np.ndarray, cache: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """-> dx (B, T, C) and the gradients of w_qkv, b_qkv, w_proj, b_proj."""
    q, k, v, att = cache["q"], cache["k"], cache["v"], cache["att"]
    batch, n_head, positions, head_dim = q.shape
    dy, dw_proj, db_proj = linear_backward(dout, cache["y"], cache["w_proj"])  # dy (B, T, C)
    dy = dy.reshape(batch, positions, n_head, head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)
    datt = dy @ v.transpose(0, 1, 3, 2)  # (B, H, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy  # (B, H, T, D)
    # softmax backward: dscores = att * (datt - sum_j datt * att); disallowed entries have att = 0, so stay 0.
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * cache["scale"]  # (B, H, T, T)
    dq = dscores @ k  # (B, H, T, D)
    dk = dscores.transpose(0, 1, 3, 2) @ q  # (B, H, T, D)
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache["x"], cache["w_qkv"])
    return dx, {"w_qkv": dw_qkv, "b_qkv": db_qkv, "w_proj": dw_proj, "b_proj": db_proj}


def mlp_forward(
    x: np.ndarray, w_fc: np.ndarray, b_fc: np.ndarray, w_proj: np.ndarray, b_proj: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """x (B, T, C) -> fc (B, T, 4C) -> GELU -> proj (B, T, C)."""
    h, _ = linear_forward(x, w_fc, b_fc)  # (B, T, 4C)
    a, _ = gelu_forward(h)  # (B, T, 4C)
    out, _ = linear_forward(a, w_proj, b_proj)  # (B, T, C)
    return out, {"x": x, "h": h, "a": a, "w_fc": w_fc, "w_proj": w_proj}


def mlp_backward(dout: np.ndarray, cache: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    da, dw_proj, db_proj = linear_backward(dout, cache["a"], cache["w_proj"])
    dh = gelu_backward(da, cache["h"])
    dx, dw_fc, db_fc = linear_backward(dh, cache["x"], cache["w_fc"])
    return dx, {"w_fc": dw_fc, "b_fc": db_fc, "w_proj": dw_proj, "b_proj": db_proj}
