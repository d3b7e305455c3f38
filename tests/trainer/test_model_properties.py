"""What the shards promise, proven on the model: masked targets teach nothing, no position sees the future, packed
documents never see each other (and lose exactly what they would alone), padding neither attends nor counts."""

from __future__ import annotations

import numpy as np
import pytest
from lossmask.trainer.batches import Batch, collate
from lossmask.trainer.layers import attention_mask, masked_softmax
from lossmask.trainer.loss import loss_weights, masked_cross_entropy
from lossmask.trainer.model import ModelConfig, backward, forward, init_params


def logits_of(params, config, batch: Batch) -> np.ndarray:
    return forward(params, config, batch.input_ids, batch.position_ids, batch.segment_ids)[0]


def loss_and_grads(params, config, batch: Batch, norm: str = "token"):
    logits, cache = forward(params, config, batch.input_ids, batch.position_ids, batch.segment_ids)
    weights = loss_weights(batch.loss_mask, batch.segment_ids, norm)
    loss, nll, dlogits = masked_cross_entropy(logits, batch.target_ids, weights)
    return loss, nll, backward(params, config, cache, dlogits)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_changing_a_masked_target_changes_nothing(tiny, make_example, pack_examples, dtype: str, norm: str) -> None:
    config, params = tiny
    config = ModelConfig(**{**config.to_dict(), "dtype": dtype})
    params = {name: value.astype(dtype) for name, value in params.items()}
    rng = np.random.default_rng(21)
    batch = collate([pack_examples([make_example(rng, 5), make_example(rng, 4)]), make_example(rng, 7)])
    masked = np.argwhere((batch.loss_mask == 0) & (batch.segment_ids >= 0))
    assert len(masked) >= 2
    loss, _, grads = loss_and_grads(params, config, batch, norm)
    for row, col in masked:
        changed = Batch(**{**vars(batch), "target_ids": batch.target_ids.copy()})
        changed.target_ids[row, col] = (batch.target_ids[row, col] + 1) % config.vocab_size
        changed_loss, _, changed_grads = loss_and_grads(params, config, changed, norm)
        assert changed_loss == loss
        for name in params:
            assert np.array_equal(changed_grads[name], grads[name]), name

    # The same change on a counted target does move the loss and the gradients: the check above can fail.
    row, col = np.argwhere(batch.loss_mask == 1)[0]
    changed = Batch(**{**vars(batch), "target_ids": batch.target_ids.copy()})
    changed.target_ids[row, col] = (batch.target_ids[row, col] + 1) % config.vocab_size
    changed_loss, _, changed_grads = loss_and_grads(params, config, changed, norm)
    assert changed_loss != loss
    assert not np.array_equal(changed_grads["lm_head"], grads["lm_head"])


def test_changing_input_j_never_changes_logits_before_j(tiny, make_example) -> None:
    config, params = tiny
    rng = np.random.default_rng(31)
    batch = collate([make_example(rng, 10)])
    logits = logits_of(params, config, batch)
    for j in range(10):
        changed = Batch(**{**vars(batch), "input_ids": batch.input_ids.copy()})
        changed.input_ids[0, j] = (batch.input_ids[0, j] + 5) % config.vocab_size
        changed_logits = logits_of(params, config, changed)
        assert np.array_equal(changed_logits[0, :j], logits[0, :j]), f"a position before {j} saw token {j}"
        assert not np.allclose(changed_logits[0, j:], logits[0, j:]), "position j and after must see token j"


def test_packed_documents_never_see_each_other(tiny, make_example, pack_examples) -> None:
    config, params = tiny
    rng = np.random.default_rng(41)
    first, second = make_example(rng, 5), make_example(rng, 6)
    batch = collate([pack_examples([first, second])])
    logits = logits_of(params, config, batch)
    in_first, in_second = batch.segment_ids[0] == 0, batch.segment_ids[0] == 1

    other_second = make_example(np.random.default_rng(42), 6)
    changed = logits_of(params, config, collate([pack_examples([first, other_second])]))
    assert np.array_equal(changed[0, in_first], logits[0, in_first])
    assert not np.allclose(changed[0, in_second], logits[0, in_second])

    # The direction causality alone does not give: the second document is blind to the first.
    other_first = make_example(np.random.default_rng(43), 5)
    changed = logits_of(params, config, collate([pack_examples([other_first, second])]))
    assert np.array_equal(changed[0, in_second], logits[0, in_second])
    assert not np.allclose(changed[0, in_first], logits[0, in_first])


def test_packed_losses_equal_separate_rows(tiny, make_example, pack_examples) -> None:
    config, params = tiny
    rng = np.random.default_rng(51)
    documents = [make_example(rng, n) for n in (3, 6, 2)]
    packed = collate([pack_examples(documents)])
    separate = collate(documents)  # padded to 6 positions
    _, packed_nll, _ = loss_and_grads(params, config, packed)
    _, separate_nll, _ = loss_and_grads(params, config, separate)
    start = 0
    for k, document in enumerate(documents):
        n = document.num_tokens
        np.testing.assert_allclose(packed_nll[0, start : start + n], separate_nll[k, :n], rtol=0, atol=1e-9)
        start += n
    # And the batch losses agree under both norms: a document weighs the same packed or not.
    for norm in ("token", "sequence"):
        assert loss_and_grads(params, config, packed, norm)[0] == pytest.approx(
            loss_and_grads(params, config, separate, norm)[0], abs=1e-9
        )


def test_without_segment_masking_packing_would_leak(tiny, make_example, pack_examples) -> None:
    """The same packed row with one segment id throughout: the second document's losses change (the check above
    is not vacuous)."""
    config, params = tiny
    rng = np.random.default_rng(51)
    documents = [make_example(rng, n) for n in (3, 6)]
    packed = collate([pack_examples(documents)])
    leaky = Batch(**{**vars(packed), "segment_ids": np.zeros_like(packed.segment_ids)})
    _, nll, _ = loss_and_grads(params, config, packed)
    _, leaky_nll, _ = loss_and_grads(params, config, leaky)
    assert np.array_equal(nll[0, :3], leaky_nll[0, :3])
    assert np.abs(nll[0, 3:] - leaky_nll[0, 3:]).max() > 1e-3


def test_padding_neither_attends_nor_counts(tiny, make_example) -> None:
    config, params = tiny
    rng = np.random.default_rng(61)
    short, long = make_example(rng, 4), make_example(rng, 9)
    alone = collate([short])
    padded = collate([short, long])  # `short` padded from 4 to 9 positions
    assert padded.loss_mask[0, 4:].sum() == 0 and (padded.segment_ids[0, 4:] == -1).all()
    np.testing.assert_allclose(
        logits_of(params, config, padded)[0, :4], logits_of(params, config, alone)[0], atol=1e-12
    )

    # Whatever the padding holds, nothing else moves, not by one bit.
    loss, _, grads = loss_and_grads(params, config, padded)
    logits = logits_of(params, config, padded)
    junk = Batch(**{name: value.copy() for name, value in vars(padded).items()})
    junk.input_ids[0, 4:] = rng.integers(0, config.vocab_size, 5)
    junk.target_ids[0, 4:] = rng.integers(0, config.vocab_size, 5)
    junk.position_ids[0, 4:] = rng.integers(0, config.block_size, 5)
    junk_loss, _, junk_grads = loss_and_grads(params, config, junk)
    junk_logits = logits_of(params, config, junk)
    assert junk_loss == loss
    assert np.array_equal(junk_logits[0, :4], logits[0, :4])
    assert np.array_equal(junk_logits[1], logits[1])
    for name in params:  # embeddings included: padding positions pass back exactly zero
        assert np.array_equal(junk_grads[name], grads[name]), name


def test_attention_mask_is_causal_within_segments_and_empty_for_padding() -> None:
    """Right padding is already hidden from real queries by causality; the mask also keeps padding queries from
    attending to anything (so a padded position's output never depends on other positions)."""
    allowed = attention_mask(np.array([[0, 0, 1, 1, -1, -1]], np.int32))[0]
    expected = np.zeros((6, 6), bool)
    expected[:4, :4] = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    np.testing.assert_array_equal(allowed, expected)
    att = masked_softmax(np.random.default_rng(0).standard_normal((6, 6)), allowed)
    assert not np.isnan(att).any() and not att[4:].any() and not att[:, 4:].any()
    np.testing.assert_allclose(att[:4].sum(axis=-1), 1.0)


def test_untrained_model_starts_near_log_vocab(make_example) -> None:
    """The lesson's starting point: before training, every target costs about log V."""
    config = ModelConfig(vocab_size=1024, block_size=32, dtype="float64")
    params = init_params(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    batch = collate([make_example(rng, 30, vocab=1024) for _ in range(4)])
    loss, _, _ = loss_and_grads(params, config, batch)
    assert abs(loss - np.log(1024)) < 0.05
