"""Engines run the stages; they never change what the stages compute.

`local` (default) streams batches through a pool of worker processes on one machine; `ray` runs the same
`process_batch` through Ray Data on a cluster. Same inputs and config -> the same rows in the same order, so the
shards are byte-identical whatever the engine or the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pipeline.batch import BatchResult, JobContext
    from ..pipeline.config import PrepareConfig
    from ..schemas.records import RawRecord

Engine = Callable[["PrepareConfig", "JobContext", Iterator[list["RawRecord"]]], Iterator["BatchResult"]]


def get(name: str) -> Engine:
    """The engine's `run(config, context, batches)`, imported only when chosen (Ray is an optional extra)."""
    if name == "local":
        from . import local

        return local.run
    if name == "ray":
        from . import ray

        return ray.run
    raise ValueError(f"unknown engine {name!r}")
