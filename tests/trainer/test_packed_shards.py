"""The proof that packing leaks nothing: the fixture conversations prepared packed (`--pack`) and unpacked give the
reference model (float64) the same loss on every token of every document, and the same total loss.

Per token, packed and unpacked agree to 1e-9 only if, in the packed rows, each document attends to itself alone
(segment_ids), its positions restart at 0 (position_ids), and its targets are its own (each document shifted
before packing). The last test shows the comparison fails when attention may cross documents, or when positions do
not restart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig
from lossmask.trainer.batches import Batch, collate
from lossmask.trainer.loss import loss_weights, masked_cross_entropy
from lossmask.trainer.model import ModelConfig, Params, forward, init_params
from lossmask.trainer.shards import Example, iter_examples, open_shards

from ..support import DEMO_INPUTS, FIXTURES

PACK = 256

Key = tuple[int, int]  # (record_index, part): one document


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = {}
    for name, options in (("rows", {}), ("packed", {"pack": PACK})):
        out = tmp_path_factory.mktemp(name) / "shards"
        config = PrepareConfig.from_mapping(
            {
                "inputs": [str(FIXTURES / "data" / n) for n in DEMO_INPUTS],
                "tokenizer": str(FIXTURES / "tokenizer"),
                "out": str(out),
                "max_length": PACK,
                **options,
            }
        )
        prepare(config)
        folders[name] = out
    return folders


@pytest.fixture(scope="module")
def model(prepared: dict[str, Path]) -> tuple[ModelConfig, Params]:
    """A small float64 model with weights big enough that attention and positions really matter."""
    config = ModelConfig(
        vocab_size=open_shards(prepared["rows"]).vocab_size, block_size=PACK, n_layer=2, n_head=2, d_model=16,
        dtype="float64",
    )  # fmt: skip
    rng = np.random.default_rng(7)
    params = init_params(config, rng)
    return config, {name: value + 0.2 * rng.standard_normal(value.shape) for name, value in params.items()}


def documents(shards: Path) -> list[list[Key]]:
    """For each row, in shard order, the (record_index, part) of each of its documents, in segment order."""
    keys: list[list[Key]] = []
    for shard in open_shards(shards).files:
        with pa.memory_map(str(shard.path), "r") as source:
            table = pa.ipc.open_file(source).read_all().select(["record_index", "part"])
        for record, part in zip(table["record_index"].to_pylist(), table["part"].to_pylist(), strict=True):
            if isinstance(record, list):
                keys.append(list(zip(record, part, strict=True)))
            else:
                keys.append([(record, part)])
    return keys


def per_document_losses(
    shards: Path, model: tuple[ModelConfig, Params], leak: str | None = None
) -> tuple[dict[Key, np.ndarray], dict[Key, np.ndarray]]:
    """-log p(target) at every position of every document, and its loss mask, keyed by document."""
    config, params = model
    examples = list(iter_examples(open_shards(shards)))
    keys = documents(shards)
    assert len(keys) == len(examples)
    nll_of: dict[Key, np.ndarray] = {}
    mask_of: dict[Key, np.ndarray] = {}
    for start in range(0, len(examples), 16):
        chunk: list[Example] = examples[start : start + 16]
        batch = collate(chunk)
        if leak == "attention":  # attention may cross documents in a packed row
            batch = Batch(**{**vars(batch), "segment_ids": np.where(batch.segment_ids >= 0, 0, -1)})
        elif leak == "positions":  # positions count on across the row instead of restarting per document
            rows = np.broadcast_to(np.arange(batch.position_ids.shape[1]), batch.position_ids.shape)
            batch = Batch(**{**vars(batch), "position_ids": np.where(batch.segment_ids >= 0, rows, 0)})
        logits, _ = forward(params, config, batch.input_ids, batch.position_ids, batch.segment_ids)
        weights = loss_weights(batch.loss_mask, batch.segment_ids)
        _, nll, _ = masked_cross_entropy(logits, batch.target_ids, weights)
        for row, example in enumerate(chunk):
            cuts = [*np.flatnonzero(np.diff(example.segment_ids, prepend=-1)).tolist(), example.num_tokens]
            for k, key in enumerate(keys[start + row]):
                nll_of[key] = nll[row, cuts[k] : cuts[k + 1]]
                mask_of[key] = example.loss_mask[cuts[k] : cuts[k + 1]].astype(bool)
    return nll_of, mask_of


def total_loss(nll_of: dict[Key, np.ndarray], mask_of: dict[Key, np.ndarray]) -> float:
    """The token-norm loss over the whole dataset: sum of -log p over counted targets / their number."""
    counted = np.concatenate([nll_of[key][mask_of[key]] for key in sorted(nll_of)])
    return float(counted.sum() / counted.size)


def test_packed_and_unpacked_give_the_same_per_token_and_total_loss(prepared, model):
    assert open_shards(prepared["packed"]).manifest["layout"] == "packed"
    packed_rows = open_shards(prepared["packed"]).num_rows
    plain_nll, plain_mask = per_document_losses(prepared["rows"], model)
    packed_nll, packed_mask = per_document_losses(prepared["packed"], model)
    assert packed_rows < len(plain_nll) / 3  # several documents per packed row
    assert sorted(packed_nll) == sorted(plain_nll)  # every document, once
    for key, nll in plain_nll.items():
        np.testing.assert_array_equal(packed_mask[key], plain_mask[key])
        np.testing.assert_allclose(packed_nll[key], nll, rtol=0, atol=1e-9, err_msg=str(key))
    plain_total, packed_total = total_loss(plain_nll, plain_mask), total_loss(packed_nll, packed_mask)
    assert abs(packed_total - plain_total) < 1e-9
    assert plain_total > 1.0  # a real loss, not a degenerate model


@pytest.mark.parametrize("leak", ["attention", "positions"])
def test_the_comparison_fails_when_packing_leaks(prepared, model, leak):
    """Attention across documents, or positions that do not restart: the per-token comparison above would fail."""
    plain_nll, _ = per_document_losses(prepared["rows"], model)
    leaky_nll, _ = per_document_losses(prepared["packed"], model, leak=leak)
    worst = max(float(np.abs(leaky_nll[key] - nll).max()) for key, nll in plain_nll.items())
    assert worst > 1e-3
