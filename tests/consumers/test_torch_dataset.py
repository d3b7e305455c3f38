"""The PyTorch wrapper, with a stand-in `torch` module (PyTorch is not installed here, nor required)."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
from lossmask.loader import ShardLoader


@pytest.fixture
def wrapper(monkeypatch):
    """`lossmask.loader.torch_dataset` imported against a minimal fake torch: tensors are tagged arrays."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch.utils")
    data = types.ModuleType("torch.utils.data")
    data.IterableDataset = type("IterableDataset", (), {})
    data.get_worker_info = lambda: None
    torch.from_numpy = lambda array: ("tensor", array)
    torch.utils, utils.data = utils, data
    for name, module in (("torch", torch), ("torch.utils", utils), ("torch.utils.data", data)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "lossmask.loader.torch_dataset", raising=False)
    return importlib.import_module("lossmask.loader.torch_dataset")


@pytest.fixture(scope="module")
def shards(kit):
    return kit.write(kit.random_documents(np.random.default_rng(31), 53), batch_rows=5)


def test_without_workers_it_yields_the_loader_batches_as_tensors(wrapper, shards):
    dataset = wrapper.ShardIterableDataset(shards, batch_size=4, seed=2)
    expected = list(ShardLoader(shards, batch_size=4, seed=2))
    got = list(dataset)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a["input_ids"][0] == "tensor" and np.array_equal(a["input_ids"][1], b["input_ids"])
        assert a["num_loss_tokens"] == b["num_loss_tokens"]  # plain numbers stay numbers
    assert dataset.loader.state_dict()["epoch"] == 1  # in-process: the state advances, resumable


def test_workers_split_each_rank_so_rows_are_read_once(wrapper, shards, monkeypatch):
    workers, world_size = 3, 2
    seen = []
    for epoch in range(2):
        ids = []
        for rank in range(world_size):
            dataset = wrapper.ShardIterableDataset(shards, batch_size=3, seed=4, rank=rank, world_size=world_size)
            dataset.set_epoch(epoch)
            for worker in range(workers):
                info = types.SimpleNamespace(id=worker, num_workers=workers)
                monkeypatch.setattr(wrapper, "get_worker_info", lambda info=info: info)
                ids += [int(r) for batch in dataset for r in batch["row_ids"][1]]
        assert sorted(ids) == list(range(53))
        seen.append(ids)
    assert seen[0] != seen[1]  # set_epoch reaches the workers' loaders
