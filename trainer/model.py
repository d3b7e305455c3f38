"""A tiny decoder-only transformer (GPT-2 shaped, pre-norm), its parameters, forward and backward, in NumPy.

    x = wte[input_ids] + wpe[position_ids]                      (B, T, C)
    for each block:  x = x + attn(ln_1(x))   x = x + mlp(ln_2(x))
    logits = ln_f(x) @ lm_head                                  (B, T, V)

Positions come from the rows' `position_ids`, so packed documents restart at 0 just as they would alone, and
attention is causal and restricted to `segment_ids` (padding is segment -1 and sees nothing). Parameters live in
a flat dict of arrays (name -> array), which is what the optimizer, the gradient check and `.npz` files use.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SetupError
from .layers import (
    attention_backward,
    attention_forward,
    attention_mask,
    layernorm_backward,
    layernorm_forward,
    mlp_backward,
    mlp_forward,
)

DTYPES = ("float32", "float64")
Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    block_size: int  # position embeddings: every position id must be < block_size
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    dtype: str = "float32"

    def validate(self) -> None:
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.d_model) < 1:
            raise SetupError("vocab size, positions, layers, heads and d_model must all be positive")
        if self.d_model % self.n_head:
            raise SetupError(f"--d-model {self.d_model} must be a multiple of --heads {self.n_head}")
        if self.dtype not in DTYPES:
            raise SetupError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def init_params(config: ModelConfig, rng: np.random.Generator) -> Params:
    """GPT-2's initialization: N(0, 0.02) weights, zero biases, unit norms, residual projections / sqrt(2 layers).

    Drawn in float64 and then cast, so a seed gives the same model in float32 and float64 (up to rounding).
    The untrained model predicts nearly uniformly: its loss starts near log(V), the lesson's "terrible at first".
    """
    c, v = config.d_model, config.vocab_size
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)

    def normal(shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
        return rng.standard_normal(shape) * std

    params: Params = {"wte": normal((v, c)), "wpe": normal((config.block_size, c))}
    for layer in range(config.n_layer):
        p = f"h{layer}."
        params[p + "ln_1.w"], params[p + "ln_1.b"] = np.ones(c), np.zeros(c)
        params[p + "attn.w_qkv"], params[p + "attn.b_qkv"] = normal((c, 3 * c)), np.zeros(3 * c)
        params[p + "attn.w_proj"], params[p + "attn.b_proj"] = normal((c, c), residual_std), np.zeros(c)
        params[p + "ln_2.w"], params[p + "ln_2.b"] = np.ones(c), np.zeros(c)
        params[p + "mlp.w_fc"], params[p + "mlp.b_fc"] = normal((c, 4 * c)), np.zeros(4 * c)
        params[p + "mlp.w_proj"], params[p + "mlp.b_proj"] = normal((4 * c, c), residual_std), np.zeros(c)
    params["ln_f.w"], params["ln_f.b"] = np.ones(c), np.zeros(c)
    params["lm_head"] = normal((c, v))
    return {name: value.astype(config.dtype) for name, value in params.items()}


def count_params(params: Params) -> int:
    return sum(int(p.size) for p in params.values())


def forward(
    params: Params,
    config: ModelConfig,
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    segment_ids: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """input_ids, position_ids, segment_ids (B, T) -> logits (B, T, V), and the cache for `backward`."""
    if position_ids.size and int(position_ids.max()) >= config.block_size:
        raise SetupError(f"position {int(position_ids.max())} is beyond the model's {config.block_size} positions")
    allowed = attention_mask(segment_ids)  # (B, T, T)
    x = params["wte"][input_ids] + params["wpe"][position_ids]  # (B, T, C)
    blocks = []
    for layer in range(config.n_layer):
        p = f"h{layer}."
        h, ln_1 = layernorm_forward(x, params[p + "ln_1.w"], params[p + "ln_1.b"])
        a, attn = attention_forward(
            h,
            params[p + "attn.w_qkv"],
            params[p + "attn.b_qkv"],
            params[p + "attn.w_proj"],
            params[p + "attn.b_proj"],
            allowed,
            config.n_head,
        )
        x = x + a  # (B, T, C)
        h, ln_2 = layernorm_forward(x, params[p + "ln_2.w"], params[p + "ln_2.b"])
        m, mlp = mlp_forward(
            h, params[p + "mlp.w_fc"], params[p + "mlp.b_fc"], params[p + "mlp.w_proj"], params[p + "mlp.b_proj"]
        )
        x = x + m  # (B, T, C)
        blocks.append((ln_1, attn, ln_2, mlp))
    h, ln_f = layernorm_forward(x, params["ln_f.w"], params["ln_f.b"])  # (B, T, C)
    logits = h @ params["lm_head"]  # (B, T, V)
    cache = {"input_ids": input_ids, "position_ids": position_ids, "blocks": blocks, "ln_f": ln_f, "h": h}
    return logits, cache


def backward(params: Params, config: ModelConfig, cache: dict[str, Any], dlogits: np.ndarray) -> Params:
    """dlogits (B, T, V) -> the gradient of every parameter (same names and shapes as `params`)."""
    grads: Params = {}
    channels = config.d_model
    h = cache["h"]  # (B, T, C)
    grads["lm_head"] = h.reshape(-1, channels).T @ dlogits.reshape(-1, config.vocab_size)  # (C, V)
    dh = dlogits @ params["lm_head"].T  # (B, T, C)
    dx, grads["ln_f.w"], grads["ln_f.b"] = layernorm_backward(dh, cache["ln_f"])
    for layer in reversed(range(config.n_layer)):
        p = f"h{layer}."
        ln_1, attn, ln_2, mlp = cache["blocks"][layer]
        dh, mlp_grads = mlp_backward(dx, mlp)  # x = x + mlp(ln_2(x)): the residual passes dx on unchanged
        dx_branch, grads[p + "ln_2.w"], grads[p + "ln_2.b"] = layernorm_backward(dh, ln_2)
        dx = dx + dx_branch
        dh, attn_grads = attention_backward(dx, attn)  # x = x + attn(ln_1(x))
        dx_branch, grads[p + "ln_1.w"], grads[p + "ln_1.b"] = layernorm_backward(dh, ln_1)
        dx = dx + dx_branch
        grads.update({p + "mlp." + k: g for k, g in mlp_grads.items()})
        grads.update({p + "attn." + k: g for k, g in attn_grads.items()})
    # Embeddings: scatter-add each position's gradient into the rows it read (np.add.at sums repeated ids).
    flat = dx.reshape(-1, channels)  # (B*T, C)
    grads["wte"] = np.zeros_like(params["wte"])
    np.add.at(grads["wte"], cache["input_ids"].reshape(-1), flat)
    grads["wpe"] = np.zeros_like(params["wpe"])
    np.add.at(grads["wpe"], cache["position_ids"].reshape(-1), flat)
    return {name: grads[name] for name in params}


def save(path: Path, params: Params, config: ModelConfig) -> None:
    """Weights as `.npz`, with the model config as JSON under the key `config` so the file stands alone."""
    np.savez(path, config=np.array(json.dumps(config.to_dict())), **params)


def load(path: Path) -> tuple[Params, ModelConfig]:
    if not path.is_file():
        raise SetupError(f"no weights at {path}; is it the --out of `lossmask train`?")
    with np.load(path, allow_pickle=False) as data:
        config = ModelConfig(**json.loads(str(data["config"])))
        params = {name: data[name] for name in data.files if name != "config"}
    return params, config
