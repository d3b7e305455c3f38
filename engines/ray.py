"""The Ray engine: the same `process_batch` through Ray Data, locally or on a cluster (`RAY_ADDRESS`).

Implemented in issue 6; importing it without Ray installed gives a SetupError saying how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..pipeline.batch import BatchResult, JobContext
from ..pipeline.config import PrepareConfig
from ..pipeline.errors import SetupError
from ..schemas.records import RawRecord


def run(config: PrepareConfig, context: JobContext, batches: Iterator[list[RawRecord]]) -> Iterator[BatchResult]:
    raise SetupError("--engine ray is not available yet")
