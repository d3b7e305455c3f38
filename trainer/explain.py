"""The lesson's table for one row of real shards: context -> target, does it count, p(target), -log p, the loss.

    pos  context (tail)          target    counts  p(target)  -log p
     12  '...capital of France?'  'The'     yes     0.0011     6.81

and at the end the row's loss, the mean of -log p over the counted targets: exactly what `lossmask train`
minimizes (token norm) for this one row. Without a run the model is untrained: it predicts nearly uniformly,
so every target costs about log V, the lesson's "terrible at first" starting point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import SetupError
from ..loader import ShardSet
from ..pipeline.tokenizer import load_tokenizer
from .batches import collate
from .loss import loss_weights, masked_cross_entropy
from .model import ModelConfig, Params, forward, init_params, load
from .shards import Example, iter_examples, open_shards, vocab_size_of
from .train import WEIGHTS_NAME

CONTEXT_CHARS = 36


@dataclass
class Position:
    position: int
    context: str  # the tail of what the model has read up to here (this document only), decoded
    target: str  # the token it must predict, decoded
    counts: bool
    p: float  # the model's probability of the target
    nll: float  # -log p


@dataclass
class Explanation:
    row: int
    source: str
    model: str
    vocab_size: int
    positions: list[Position]
    loss: float  # mean of -log p over counted targets
    notes: list[str] = field(default_factory=list)

    @property
    def counted(self) -> int:
        return sum(p.counts for p in self.positions)


def find_row(shards: ShardSet, row: int) -> Example:
    if row < 0:
        raise SetupError(f"--row must be 0 or more, not {row}")
    for example in iter_examples(shards, start=row):
        return example
    raise SetupError(
        f"--row {row} is out of range: {shards.directory} has {shards.num_rows} rows (0..{shards.num_rows - 1})"
    )


def load_model(run_dir: str | None, vocab_size: int, positions: int, seed: int) -> tuple[Params, ModelConfig, str]:
    """The trained model of a run, or an untrained one (float64 either way, for precise probabilities)."""
    if run_dir is None:
        config = ModelConfig(vocab_size=vocab_size, block_size=max(positions, 1), dtype="float64")
        params = init_params(config, np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0]))
        description = (
            f"untrained (seed {seed}; {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads)"
        )
        return params, config, description
    params, config = load(Path(run_dir) / WEIGHTS_NAME)
    if config.vocab_size != vocab_size:
        raise SetupError(f"the run's model has a vocabulary of {config.vocab_size}, the shards {vocab_size}")
    description = f"trained, from {run_dir} ({config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads)"
    params = {name: value.astype(np.float64) for name, value in params.items()}
    config = ModelConfig(**{**config.to_dict(), "dtype": "float64"})
    return params, config, description


def readable(text: str) -> str:
    """A token or context as one visible line: control characters escaped, quotes around it."""
    return repr(text)


def tail(text: str, width: int = CONTEXT_CHARS) -> str:
    shown = readable(text)
    return shown if len(shown) <= width else "…" + shown[-(width - 1) :]


def explain(
    shards_dir: str,
    row: int,
    run_dir: str | None = None,
    tokenizer: str | None = None,
    seed: int = 0,
    context_tokens: int = 8,
) -> Explanation:
    shards = open_shards(shards_dir)
    example = find_row(shards, row)
    tokenizer_path = tokenizer or shards.tokenizer_path
    if not tokenizer_path:
        raise SetupError(f"{shards.directory}'s manifest names no tokenizer; pass --tokenizer")
    if not Path(tokenizer_path).exists():
        raise SetupError(
            f"tokenizer {tokenizer_path!r} (from {shards.directory}'s manifest, relative to where prepare ran) "
            "does not exist here; pass --tokenizer PATH"
        )
    info = load_tokenizer(tokenizer_path)
    notes = []
    recorded = ((shards.manifest.get("fingerprints") or {}).get("tokenizer") or {}).get("sha256")
    if recorded and recorded != info.fingerprint:
        notes.append(f"warning: tokenizer {tokenizer_path} differs from the one the shards were made with")

    params, config, description = load_model(run_dir, vocab_size_of(shards), example.num_tokens, seed)
    if example.num_tokens > config.block_size:
        notes.append(f"the row has {example.num_tokens} positions; the model sees the first {config.block_size}")
        example = example.cut(config.block_size)

    batch = collate([example])  # (1, T)
    with threadpool_limits(limits=1, user_api="blas"):
        logits, _ = forward(params, config, batch.input_ids, batch.position_ids, batch.segment_ids)
    weights = loss_weights(batch.loss_mask, batch.segment_ids, "token")
    loss, nll, _ = masked_cross_entropy(logits, batch.target_ids, weights)

    decode = info.tokenizer.decode
    positions = []
    for i in range(example.num_tokens):
        start = i
        while start > 0 and i - start + 1 < context_tokens and example.segment_ids[start - 1] == example.segment_ids[i]:
            start -= 1
        context = decode(example.input_ids[start : i + 1].tolist(), skip_special_tokens=False)
        segment_start = start == 0 or example.segment_ids[start - 1] != example.segment_ids[i]
        positions.append(
            Position(
                position=i,
                context=context if segment_start else "…" + context,
                target=decode([int(example.target_ids[i])], skip_special_tokens=False),
                counts=bool(example.loss_mask[i]),
                p=math.exp(-float(nll[0, i])),
                nll=float(nll[0, i]),
            )
        )
    return Explanation(
        row=row,
        source=example.source,
        model=description,
        vocab_size=vocab_size_of(shards),
        positions=positions,
        loss=loss if example.num_loss_tokens else math.nan,
        notes=notes,
    )


def format_explanation(explanation: Explanation) -> str:
    """The table as plain text (one line per position), then the loss line."""
    log_v = math.log(explanation.vocab_size)
    lines = [
        f"row {explanation.row} ({explanation.source}): {len(explanation.positions)} positions, "
        f"{explanation.counted} counted targets",
        f"model: {explanation.model}; vocabulary {explanation.vocab_size}, uniform loss log V = {log_v:.3f}",
        *explanation.notes,
        "",
        f"{'pos':>5}  {'context (tail)':>{CONTEXT_CHARS}}  ->  {'target':<16} {'counts':<6} {'p(target)':>10} "
        f"{'-log p':>8}",
    ]
    for p in explanation.positions:
        lines.append(
            f"{p.position:>5}  {tail(p.context):>{CONTEXT_CHARS}}  ->  {readable(p.target):<16} "
            f"{'yes' if p.counts else 'no':<6} {p.p:>10.4g} {p.nll:>8.3f}"
        )
    lines.append("")
    lines.append(
        f"loss = mean of -log p over the {explanation.counted} counted targets = {explanation.loss:.4f}"
        f"   (log V = {log_v:.4f})"
    )
    return "\n".join(lines)
