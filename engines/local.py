"""The local engine: all cores of one machine, bounded memory, results in input order.

The main process reads records in order and writes shards; worker processes run `process_batch`. At most
`2 x workers` batches are in flight, so memory does not grow with the input. Results come back in submission
order, so the output does not depend on the number of workers. Workers come from a `forkserver` (clean
processes that do not inherit the parent's threads) and each keeps one `JobContext` (tokenizer, template,
cached plans) for its whole life. Tokenizer threads are limited to one per worker, since the workers already
use every core.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from ..pipeline.batch import BatchResult, JobContext, process_batch
from ..pipeline.config import PrepareConfig
from ..schemas.records import RawRecord

_CONTEXT: JobContext | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run(config: PrepareConfig, context: JobContext, batches: Iterator[list[RawRecord]]) -> Iterator[BatchResult]:
    """Process batches, yielding their results in input order."""
    workers = config.workers or available_cores()
    window = max(2, 2 * workers)
    head: list[list[RawRecord]] = []
    for batch in batches:  # small inputs are done here: starting workers would cost more than it saves
        head.append(batch)
        if len(head) >= window:
            break
    if workers <= 1 or len(head) < window:
        for batch in head:
            yield process_batch(batch, context)
        for batch in batches:
            yield process_batch(batch, context)
        return
    start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    mp_context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":  # imported once in the server, so each worker starts with them
        mp_context.set_forkserver_preload(["lossmask.pipeline.batch"])
    with ProcessPoolExecutor(workers, mp_context=mp_context, initializer=_start_worker, initargs=(config,)) as pool:
        pending: deque[Future[BatchResult]] = deque()
        for batch in _chain(head, batches):
            pending.append(pool.submit(_work, batch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _chain(head: list[list[RawRecord]], rest: Iterator[list[RawRecord]]) -> Iterator[list[RawRecord]]:
    yield from head
    yield from rest


def _start_worker(config: PrepareConfig) -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _CONTEXT
    _CONTEXT = JobContext.from_config(config)
    gc.freeze()  # the context lives as long as the worker: the cyclic collector need never scan it again


def _work(batch: list[RawRecord]) -> BatchResult:
    assert _CONTEXT is not None, "worker used before its initializer ran"
    return process_batch(batch, _CONTEXT)
