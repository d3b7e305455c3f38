"""`ShardLoader` as a PyTorch `IterableDataset`. PyTorch stays optional: only this module imports it.

    dataset = ShardIterableDataset("out/shards", batch_size=8, seed=0, rank=rank, world_size=world_size)
    data = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)   # batches are already made
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch in data:
            logits = model(batch["input_ids"], position_ids=batch["position_ids"])
            losses = F.cross_entropy(logits.flatten(0, 1), batch["target_ids"].flatten(), reduction="none")
            loss = (losses * batch["loss_mask"].flatten()).sum() / batch["num_loss_tokens"]

With `num_workers > 1` each worker reads its own disjoint share (rank * workers + worker of world_size *
workers), so the rows of an epoch are still read exactly once. Saving and resuming the position is supported
with `num_workers=0`, where the loader runs in this process: `dataset.loader.state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .loader import ShardLoader
from .shards import ShardSet


class ShardIterableDataset(IterableDataset):
    """Yields ready batches (dicts of tensors); use it with `DataLoader(dataset, batch_size=None)`."""

    def __init__(
        self, shards: str | Path | ShardSet, batch_size: int, *, rank: int = 0, world_size: int = 1, **options: Any
    ):
        super().__init__()
        self.shards, self.batch_size, self.rank, self.world_size, self.options = (
            shards,
            batch_size,
            rank,
            world_size,
            options,
        )
        self.loader = ShardLoader(shards, batch_size, rank=rank, world_size=world_size, **options)

    def set_epoch(self, epoch: int) -> None:
        """Needed with workers: each worker starts from this copy of the loader, whose epoch it cannot advance."""
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = self.loader
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            loader = ShardLoader(
                self.shards,
                self.batch_size,
                rank=self.rank * worker.num_workers + worker.id,
                world_size=self.world_size * worker.num_workers,
                **self.options,
            )
            loader.set_epoch(self.loader.epoch)
        for batch in loader:
            yield {key: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for key, v in batch.items()}
