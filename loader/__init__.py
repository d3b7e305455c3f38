"""Reading prepared shards back: `ShardSet`, a checked shard folder in manifest order."""

from .shards import ShardSet

__all__ = ["ShardSet"]
