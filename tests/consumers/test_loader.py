"""`ShardLoader`: exactly-once partitions across ranks, seeded order, exact resumption, faithful batches."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.errors import SetupError
from lossmask.loader import ShardLoader, block_causal_mask
from lossmask.loader.order import epoch_order, permutation


@pytest.fixture(scope="module")
def folders(kit):
    """A few synthetic folders (documents of 2..12 tokens), reused by the property tests."""
    rng = np.random.default_rng(21)
    return {
        "rows": kit.write(kit.random_documents(rng, 97), rows_per_shard=30, batch_rows=8),
        "packed": kit.write(
            kit.random_documents(rng, 120), packed=True, pack_sizes=(2, 1, 3), rows_per_shard=20, batch_rows=6
        ),
        "tiny": kit.write(kit.random_documents(rng, 3), batch_rows=2),
    }


def epoch_row_ids(loader: ShardLoader) -> list[int]:
    return [int(r) for batch in loader for r in batch["row_ids"]]


loader_options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(1, 6),
        "pack_length": st.sampled_from([None, 36, 64]),
        "shuffle": st.booleans(),
        "seed": st.integers(0, 2**40),
        "window_blocks": st.integers(1, 4),
    }
)


@settings(max_examples=40, deadline=None)
@given(options=loader_options, world_size=st.integers(1, 5), folder=st.sampled_from(["rows", "packed", "tiny"]))
def test_every_row_once_per_epoch_across_ranks(folders, options, world_size, folder):
    loaders = [ShardLoader(folders[folder], rank=r, world_size=world_size, **options) for r in range(world_size)]
    for epoch in range(2):
        seen = [epoch_row_ids(loader) for loader in loaders]
        everything = sorted(r for ids in seen for r in ids)
        assert everything == list(range(loaders[0].num_rows)), epoch
        assert max(map(len, seen)) - min(map(len, seen)) <= 1  # round-robin: ranks differ by one row at most
        assert all(loader.epoch == epoch + 1 for loader in loaders)


@settings(max_examples=25, deadline=None)
@given(options=loader_options, world_size=st.integers(1, 4), folder=st.sampled_from(["rows", "packed"]))
def test_drop_last_gives_every_rank_the_same_full_batches(folders, options, world_size, folder):
    loaders = [
        ShardLoader(folders[folder], rank=r, world_size=world_size, drop_last=True, **options)
        for r in range(world_size)
    ]
    announced = [len(loader) for loader in loaders]  # batches of the current epoch
    batches = [list(loader) for loader in loaders]
    assert [len(b) for b in batches] == announced
    assert len(set(announced)) == 1
    ids = [int(r) for rank in batches for batch in rank for r in batch["row_ids"]]
    assert len(ids) == len(set(ids))
    for rank in batches:
        for batch in rank:
            assert batch["input_ids"].shape[0] == options["batch_size"]


def test_same_seed_same_order_other_seed_or_epoch_other_order(folders):
    def order(seed: int, epoch: int = 0) -> list[int]:
        loader = ShardLoader(folders["rows"], batch_size=4, seed=seed)
        loader.set_epoch(epoch)
        return epoch_row_ids(loader)

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(7, epoch=0) != order(7, epoch=1)
    assert order(7) != sorted(order(7))
    unshuffled = ShardLoader(folders["rows"], batch_size=4, shuffle=False)
    assert epoch_row_ids(unshuffled) == list(range(97))


def test_the_order_is_pinned():
    """The permutation is a fixed function (splitmix64), not numpy.random's stream: these values never change."""
    assert permutation(8, seed=0, epoch=0, stream=0).tolist() == PINNED_PERMUTATION
    order = epoch_order(np.array([3, 2, 4]), seed=1, epoch=2, shuffle=True, window_blocks=2)
    assert sorted(order.tolist()) == list(range(9))


PINNED_PERMUTATION = [0, 1, 4, 2, 3, 6, 7, 5]


@settings(max_examples=30, deadline=None)
@given(
    options=loader_options,
    world_size=st.integers(1, 3),
    stop=st.integers(0, 60),
    folder=st.sampled_from(["rows", "packed"]),
)
def test_resuming_from_a_saved_state_continues_where_it_stopped(folders, options, world_size, stop, folder):
    rank = world_size - 1
    reference = ShardLoader(folders[folder], rank=rank, world_size=world_size, **options)
    expected = list(reference) + list(reference)  # two whole epochs
    stop = min(stop, len(expected))

    first = ShardLoader(folders[folder], rank=rank, world_size=world_size, **options)
    got = []
    iterator = iter(first)
    for _ in range(stop):
        try:
            got.append(next(iterator))
        except StopIteration:  # end of epoch 0: go on with epoch 1
            iterator = iter(first)
            got.append(next(iterator))
    saved = json.loads(json.dumps(first.state_dict()))

    resumed = ShardLoader(folders[folder], rank=rank, world_size=world_size, **options)
    resumed.load_state_dict(saved)
    while len(got) < len(expected):
        got.extend(resumed)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), key


def test_a_state_for_another_order_is_refused(folders):
    state = ShardLoader(folders["rows"], batch_size=4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        ShardLoader(folders["rows"], batch_size=4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        ShardLoader(folders["rows"], batch_size=4, seed=1, world_size=2).load_state_dict(state)


def test_padded_batches_hold_the_shard_rows(prepared_dir):
    table = ds.dataset(str(prepared_dir), format="arrow").to_table().to_pydict()
    loader = ShardLoader(prepared_dir, batch_size=5, seed=3)
    count = 0
    for batch in loader:
        assert batch["input_ids"].shape[1] == max(table["num_tokens"][r] for r in batch["row_ids"])
        for b, r in enumerate(batch["row_ids"]):
            n = table["num_tokens"][r]
            assert batch["input_ids"][b, :n].tolist() == table["input_ids"][r]
            assert batch["target_ids"][b, :n].tolist() == table["target_ids"][r]
            assert batch["loss_mask"][b, :n].tolist() == [bool(m) for m in table["loss_mask"][r]]
            assert batch["position_ids"][b, :n].tolist() == table["position_ids"][r]
            assert batch["attention_mask"][b].tolist() == [True] * n + [False] * (batch["input_ids"].shape[1] - n)
            assert not batch["loss_mask"][b, n:].any() and (batch["segment_ids"][b, n:] == -1).all()
        assert batch["num_loss_tokens"] == sum(sum(table["loss_mask"][r]) for r in batch["row_ids"])
        count += len(batch["row_ids"])
    assert count == len(table["input_ids"])


def test_packed_batches_keep_documents_apart(folders):
    table = ds.dataset(str(folders["packed"]), format="arrow").to_table().to_pydict()
    loader = ShardLoader(folders["packed"], batch_size=3, pack_length=40, seed=5)
    for batch in loader:
        assert batch["input_ids"].shape == (len(batch["input_ids"]), 40)
        lengths = []
        for b in range(batch["input_ids"].shape[0]):
            segments = batch["segment_ids"][b][batch["attention_mask"][b]]
            positions = batch["position_ids"][b][batch["attention_mask"][b]]
            starts = np.flatnonzero(np.diff(segments, prepend=-1))
            assert segments.tolist() == np.repeat(np.arange(starts.size), np.diff([*starts, segments.size])).tolist()
            assert (positions[starts] == 0).all()  # positions restart with every document
            lengths += np.diff([*starts, segments.size]).tolist()
        assert batch["cu_seqlens"].tolist() == np.cumsum([0, *lengths]).tolist()
        assert batch["max_seqlen"] == max(lengths)
        ids = batch["input_ids"][batch["attention_mask"]].tolist()
        assert ids == [t for r in batch["row_ids"] for t in table["input_ids"][r]]


def test_a_row_longer_than_pack_length_is_a_setup_error(folders):
    with pytest.raises(SetupError, match="more than pack_length=5"):
        list(ShardLoader(folders["rows"], batch_size=2, pack_length=5))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=9), st.integers(0, 3))
def test_block_causal_mask(segments, pad):
    segment_ids = np.array([sorted(segments) + [-1] * pad])
    mask = block_causal_mask(segment_ids)[0]
    n = segment_ids.shape[1]
    for i in range(n):
        for j in range(n):
            s_i, s_j = segment_ids[0, i], segment_ids[0, j]
            expected = i == j if s_i < 0 else (j <= i and s_i == s_j)
            assert mask[i, j] == expected


def test_blocks_in_memory_stay_within_the_window(folders, monkeypatch):
    from lossmask.loader import loader as module

    peak = []
    original = module._BlockCache._get

    def spy(self, block):
        result = original(self, block)
        peak.append(len(self.blocks))
        return result

    monkeypatch.setattr(module._BlockCache, "_get", spy)
    list(ShardLoader(folders["rows"], batch_size=4, window_blocks=2, seed=1))
    assert max(peak) == 2
