"""The Ray engine for record-stream jobs (`--pack`, `--concat`, `dedup`, `datasets:`, `eval:`): `process_batch`,
as the `pa.Table -> pa.Table` function `engines.tables.process_table`, through Ray Data's `map_batches`, on this
machine or on a cluster (`RAY_ADDRESS`). Jobs that write each record's rows as they are run as Ray tasks that do
their own reading and writing instead (`engines.ray_units`).

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


def start() -> bool:
    """Connect to the cluster at `RAY_ADDRESS`, or start one on this machine, unless Ray is running already;
    returns whether this call started it (and its caller must then `ray.shutdown()`)."""
    try:
        import ray
        import ray.data  # the record-stream engine's, and a check that the extra is installed
    except ImportError:
        raise SetupError("--engine ray needs Ray Data: pip install 'lossmask[ray]'") from None
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:  # Ray raises many kinds; each means the same to the user
        ray.shutdown()  # what ray.init had started (GCS, raylet, agents) must not stay behind
        raise SetupError(f"--engine ray could not start Ray: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    return True


def run(config: PrepareConfig, context: JobContext, batches: Iterator[list[RawRecord]]) -> Iterator[BatchResult]:
    started_here = start()
    import ray
    import ray.data

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
