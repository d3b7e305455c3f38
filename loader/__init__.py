"""Reading prepared shards back: `ShardSet` (a checked shard folder) and `ShardLoader` (framework-free batches).

    from lossmask.loader import ShardLoader

    loader = ShardLoader("out/shards", batch_size=8, seed=0, rank=0, world_size=1)
    for batch in loader:
        batch["input_ids"], batch["target_ids"], batch["loss_mask"]   # already shifted: no shift in the loss

`lossmask.loader.torch_dataset` wraps it as a PyTorch `IterableDataset` (PyTorch is optional).
"""

from .batching import block_causal_mask, collate
from .loader import ShardLoader
from .shards import ShardSet

__all__ = ["ShardLoader", "ShardSet", "block_causal_mask", "collate"]
