"""The Ray engine: `process_batch`, as the `pa.Table -> pa.Table` function `engines.tables.process_table`,
through Ray Data's `map_batches`, on this machine or on a cluster (`RAY_ADDRESS`).

The driver reads records and writes shards exactly as with the local engine, so batching, accounting,
checkpoints and shard boundaries are the same and the output is byte-identical. Work is sent in windows of
batches (bounded memory), each window a Ray dataset of one block per batch, mapped with `preserve_order=True`.
The stage is a plain function importable from the installed package (every Ray worker needs lossmask installed
and the tokenizer path readable); its `JobContext` is cached per worker process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from itertools import islice

from ..errors import SetupError
from ..pipeline.batch import BatchResult, JobContext
from ..pipeline.config import PrepareConfig
from ..schemas.records import RawRecord
from .tables import process_table, records_to_table, table_to_result

BATCHES_PER_WINDOW = 64


def run(config: PrepareConfig, context: JobContext, batches: Iterator[list[RawRecord]]) -> Iterator[BatchResult]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise SetupError("--engine ray needs Ray Data: pip install 'lossmask[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # Ray raises many kinds; each means the same to the user
            ray.shutdown()  # what ray.init had started (GCS, raylet, agents) must not stay behind
            raise SetupError(f"--engine ray could not start Ray: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True
    data_context.enable_progress_bars = False
    config_json = json.dumps({**config.to_dict(), "workers": 1})
    try:
        while window := list(islice(batches, BATCHES_PER_WINDOW)):
            dataset = ray.data.from_arrow([records_to_table(batch) for batch in window])
            mapped = dataset.map_batches(
                process_table, batch_size=None, batch_format="pyarrow", fn_kwargs={"config_json": config_json}
            )
            for table in mapped.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                yield table_to_result(table)
    finally:
        if started_here:
            ray.shutdown()
