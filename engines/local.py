"""The local engine: all cores of one machine, bounded memory, results in input order.

The main process reads records in order and writes shards; worker processes run `process_batch`. At most
`2 x workers` batches are in flight, so memory does not grow with the input. Results come back in submission
order, so the output does not depend on the number of workers. Workers come from a `forkserver` (clean
processes that do not inherit the parent's threads) and each keeps one `JobContext` (tokenizer, template,
cached plans) for its whole life. Tokenizer threads are limited to one per worker, since the workers already
use every core. Workers never outlive the job: when it stops for any reason they are killed without finishing
their batches, and they end themselves when the main process dies, even by `kill -9` (`_die_with`).
"""

from __future__ import annotations

import base64
import gc
import multiprocessing
import os
import pickle
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import SetupError
from ..pipeline.batch import BatchResult, JobContext, process_batch
from ..pipeline.config import PrepareConfig
from ..schemas.records import RawRecord
from . import preloaded

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
    mp_context = _mp_context()
    pool = ProcessPoolExecutor(
        workers, mp_context=mp_context, initializer=_start_worker, initargs=(os.getpid(), config)
    )
    workers_seen: dict[int, multiprocessing.process.BaseProcess] = {}  # the pool starts them as it needs them
    try:
        pending: deque[Future[BatchResult]] = deque()
        for batch in _chain(head, batches):
            try:
                pending.append(pool.submit(_work, batch))
            except BrokenProcessPool:  # a worker died and the pool noticed before a result said so
                raise _died(workers_seen) from None
            workers_seen.update(pool._processes or {})
            if len(pending) >= window:
                yield _result(pending.popleft(), pool, workers_seen)
        while pending:
            yield _result(pending.popleft(), pool, workers_seen)
    except BaseException:  # stopped (a signal, an error, the consumer gone): the workers' work is not wanted
        _stop_now(pool)
        raise
    pool.shutdown()


# The modules the forkserver imports once, so that each worker it forks starts with them.
_PRELOAD = ["lossmask.pipeline.batch"]
# Inputs from this size on start the forkserver early (`start_server`): enough records for several batches.
START_SERVER_MIN_BYTES = 1 << 20


def _mp_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    mp_context = multiprocessing.get_context("forkserver")
    mp_context.set_forkserver_preload(_PRELOAD)
    return mp_context


def start_server(config: PrepareConfig) -> None:
    """Start the forkserver now, for a job that will start workers (`run`): booting it (a Python process that
    imports the pipeline, ~0.3 s) then overlaps the main process's own start (its `JobContext`, ~0.3 s), instead of
    starting only when the first batch is submitted; the workers it forks build their contexts at once. The
    server is the one `run` would start (same preload); when the job ends up not starting workers, it idles and
    ends with this process, as after any job with workers. The server also builds the job's context once, for
    the workers it forks (`preloaded`). Changes when work happens, never what it computes."""
    if (config.workers or available_cores()) <= 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    _mp_context().set_forkserver_preload([*_PRELOAD, "lossmask.engines.preloaded"])
    os.environ[preloaded.ENV] = base64.b64encode(pickle.dumps(config)).decode("ascii")
    try:
        forkserver.ensure_running()  # spawns the server and returns: it imports the preload on its own
    finally:
        os.environ.pop(preloaded.ENV, None)  # the server has its copy; nothing else started from here needs it


# How often the main process, waiting for a result, checks that every worker is alive.
_WATCH_SECONDS = 1.0


def _result(
    future: Future[BatchResult], pool: ProcessPoolExecutor, seen: dict[int, multiprocessing.process.BaseProcess]
) -> BatchResult:
    """A batch's result, or one line when a worker died (the kernel's OOM killer, a `kill -9`): the pool then
    breaks, or, when the worker died in the middle of sending a result, its manager thread waits forever for the
    rest of it; so the wait checks the workers every `_WATCH_SECONDS`. No worker ends on its own while the job
    runs, so any that has ended died. `seen` keeps every worker the pool has started (it forgets broken ones)."""
    while True:
        seen.update(pool._processes or {})
        try:
            return future.result(timeout=_WATCH_SECONDS)
        except TimeoutError:
            if any(p.exitcode is not None for p in seen.values()):
                raise _died(seen) from None
        except BrokenProcessPool:
            raise _died(seen) from None


def _died(seen: dict[int, multiprocessing.process.BaseProcess]) -> WorkerDied:
    """The error for a dead worker, with its exit status. The pool can say it is broken a moment before the
    dead worker's status reaches this process (the forkserver reaps it and sends it on): wait for it briefly."""
    deadline = time.monotonic() + 5
    while True:
        dead = next((p for p in seen.values() if p.exitcode is not None), None)
        if dead is not None or time.monotonic() > deadline:
            return WorkerDied(None if dead is None else dead.exitcode)
        time.sleep(0.01)


class WorkerDied(SetupError):
    """A worker process died while the job ran: one line, exit 2, and the same command resumes."""

    def __init__(self, exitcode: int | None):
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        if exitcode is None:
            how = "ended abruptly"
        hint = " (SIGKILL: often the out-of-memory killer; try fewer --workers)" if exitcode == -9 else ""
        super().__init__(
            f"a worker process died, {how}{hint}; finished shards are kept: rerun the same command to resume"
        )


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """End the pool without waiting for the batches in flight (`shutdown(wait=True)` would finish them all).

    The executor offers no kill, so its workers are killed here; one may die in the middle of sending a batch's
    result. The pool's manager thread is then blocked in recv() on that result's missing bytes, and the result
    pipe never reaches end of file while this process holds its write end (only workers write to it). At exit
    the interpreter joins that thread (concurrent.futures' `_python_exit`): the job would print its stop line
    and hang (waking the thread would not help: it is in recv(), not waiting). Closing this process's write end
    once the workers are dead makes that recv() fail at once, and the thread ends as for any broken pool
    (`terminate_broken`), releasing the pool's resources: no `os._exit`, which left the resource tracker to
    report leaked semaphores. The thread is then waited for (a few seconds at most): Python 3.11's exit hook
    wakes it through a pipe the thread closes as it ends, and a thread still ending at exit makes that hook
    print a traceback ("Exception ignored in: <module 'threading'>", seen once under load)."""
    processes = list((pool._processes or {}).values())
    results = getattr(pool, "_result_queue", None)  # set to None by shutdown(): taken before it
    manager = getattr(pool, "_executor_manager_thread", None)  # likewise
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(5)
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()
    if manager is not None:
        manager.join(5)


def _chain(head: list[list[RawRecord]], rest: Iterator[list[RawRecord]]) -> Iterator[list[RawRecord]]:
    yield from head
    yield from rest


def _start_worker(parent: int, config: PrepareConfig) -> None:
    _die_with(parent)
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the main process stops the job and kills
    # its workers (`_stop_now`), which must not die first with tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _CONTEXT
    _CONTEXT = preloaded.context_for(config) or JobContext.from_config(config)
    gc.freeze()  # the context lives as long as the worker: the cyclic collector need never scan it again


def _die_with(parent: int) -> None:
    """Never outlive the job, even after `kill -9` of its main process: a daemon thread waits on a pidfd of the
    main process and ends the worker the moment it exits. (A parent-death signal would not do: a worker's parent
    is the forkserver, which itself lives as long as any worker holds its copy of the forkserver's pipe.) Once
    the workers are gone, the forkserver and the resource tracker see their pipes close and exit too."""
    try:
        watched = os.pidfd_open(parent)
    except ProcessLookupError:  # already gone
        os._exit(1)
    threading.Thread(target=_exit_when_done, args=(watched,), name="lossmask-watch-job", daemon=True).start()


def _exit_when_done(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has exited
    os._exit(1)


def _work(batch: list[RawRecord]) -> BatchResult:
    assert _CONTEXT is not None, "worker used before its initializer ran"
    return process_batch(batch, _CONTEXT)
