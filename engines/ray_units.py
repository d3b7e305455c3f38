"""The Ray engine for unit jobs (`jobs.units`): Ray tasks read, process and write whole work units; the driver
plans and collects summaries.

Three kinds of task, each a plain function of small arguments, run wherever Ray places them:

1. `_hash_task(file)`: an input's sha256 (for the fingerprints: the driver never reads an input's bytes);
2. `_survey_task(config, unit)`: a unit's newlines, records and format (`unit_writer.survey_unit`), from which the
   driver numbers the units (`units.number_units`: integers only);
3. `_write_task(config, unit, first_index, format, out)`: the unit's shards and rejects part, written by the task
   itself into `out` (`unit_writer.run_unit`); it returns the unit's `UnitSummary` as a dict.

A task that dies (its worker killed, its node lost) is run again by Ray (`max_retries`); a unit's files are written
under temporary names and renamed when whole, so a retried unit replaces whatever the dead attempt left. Every
task needs lossmask installed, the tokenizer path and the inputs readable, and `out` writable where it runs: a
shared filesystem, or an object store (docs/scale.md, "Running on a Ray cluster").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from .. import storage
from ..errors import SetupError
from ..files import file_sha256
from ..pipeline.batch import JobContext
from ..pipeline.config import PrepareConfig
from ..pipeline.encoders import EncoderMismatch
from ..pipeline.read import InputFile, input_sha256
from ..pipeline.unit_writer import UnitSummary, run_unit, survey_unit
from ..pipeline.units import Unit, UnitCount, number_units
from .ray import start
from .tables import worker_context

# Each task is one process's work on one core: the tokenizer's own thread pool would only compete with the
# other tasks on the node.
TASK_ENV = {"env_vars": {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}}
RETRIES = 3  # runs of a task whose worker died, after its first


def _hash_task(path: InputFile) -> str:
    return input_sha256(path)


def _verify_task(where: str, sha256: str) -> bool:
    """Whether the object (a URL) or file (a local path, on a filesystem every worker mounts) has this sha256."""
    if storage.is_url(where):
        return storage.sha256(storage.RemoteFile(where)) == sha256
    return os.path.isfile(where) and file_sha256(where) == sha256


def _survey_task(config_json: str, unit: Unit) -> dict[str, Any]:
    count = survey_unit(worker_context(config_json), unit)
    return {"lines": count.lines, "records": count.records, "format": count.format}


def _write_task(config_json: str, unit: Unit, first_index: int, known_format: str | None, out: str) -> dict[str, Any]:
    return run_unit(worker_context(config_json), unit, first_index, known_format, out).to_dict()


def _get(refs: Any) -> Any:
    """`ray.get`, with a task's own failure as it was raised in the task (a `SetupError` is then one line, an
    `EncoderMismatch` restarts the job with `tokenizers`), and a task Ray gave up on as one line."""
    import ray
    import ray.exceptions

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, (SetupError, EncoderMismatch)):
            raise cause from None
        raise SetupError(f"a Ray task failed: {type(cause).__name__}: {cause}".splitlines()[0]) from None
    except ray.exceptions.RayError as exc:  # its worker died more often than the retries, its node was lost, ...
        raise SetupError(
            f"--engine ray: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; finished units are "
            "kept: rerun the same command to resume"
        ) from None


class RayUnits:
    """A unit job's Ray session: started (or joined) on enter, shut down on exit if this job started it."""

    def __init__(self, config: PrepareConfig):
        self.config_json = json.dumps({**config.to_dict(), "workers": 1})
        self.started_here = False

    def __enter__(self) -> RayUnits:
        self.started_here = start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            import ray

            ray.shutdown()

    def _remote(self, function: Any) -> Any:
        import ray

        return ray.remote(function).options(max_retries=RETRIES, runtime_env=TASK_ENV, num_cpus=1)

    def hashes(self, paths: list[InputFile]) -> list[str]:

        task = self._remote(_hash_task)
        return _get([task.remote(path) for path in paths])

    needs_counts = True
    # The checkpoint lists every finished unit (about half a KB each) and is rewritten whole: on a cluster that
    # finishes many units a second, it is saved at most this often (a killed driver redoes the units since).
    checkpoint_seconds = float(os.environ.get("LOSSMASK_CHECKPOINT_SECONDS", "5"))

    def verify(self, objects: list[tuple[str, str]]) -> list[bool]:
        """Whether each (URL, sha256) object has that sha256, streamed by a task per object (a resumed job's
        finished units: checked where the data is, not through the driver)."""
        task = self._remote(_verify_task)
        return _get([task.remote(url, sha256) for url, sha256 in objects])

    def map(self, function: Callable[..., Any], calls: list[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """Each call of `function` (a plain function of small arguments) as a task: (the call's index, its result)
        as each finishes, in any order. Stopped early, the unfinished tasks are cancelled."""
        import ray

        task = self._remote(function)
        pending = {task.remote(*args): index for index, args in enumerate(calls)}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ready[0])
                yield index, _get(ready[0])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def count(self, units: list[Unit]) -> list[dict[str, Any]]:
        """The counting pass: each unit's newlines, records and format, by a task per unit."""

        survey = self._remote(_survey_task)
        return _get([survey.remote(self.config_json, unit) for unit in units])

    def run(
        self,
        context: JobContext,
        units: list[Unit],
        done: dict[int, UnitSummary],
        checkpoint: Any,
        out: str,
        progress: Any,
        save_progress: Any = None,
    ) -> Iterator[UnitSummary]:
        """The units not `done`, each written by a task; their summaries as the tasks finish (any order). A unit
        the local engine had in progress is written again whole (`save_progress` is the local engine's)."""
        import ray

        counts = [UnitCount(**count) for count in checkpoint.unit_counts]
        numbered = number_units(units, counts)
        known = _known_formats(units, counts)
        write = self._remote(_write_task)
        pending = {
            write.remote(self.config_json, unit, first_index, known[unit.index], out): unit.index
            for unit, first_index in numbered
            if unit.index not in done
        }
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                pending.pop(ready[0])
                summary = UnitSummary.from_dict(_get(ready[0]))
                if progress is not None:
                    progress(summary.records, sum(s.tokens for s in summary.shards))
                yield summary
        finally:
            for ref in pending:  # stopped: the units not yet written are not wanted
                ray.cancel(ref, force=True)


def _known_formats(units: list[Unit], counts: list[UnitCount]) -> dict[int, str | None]:
    """Per unit, the format its file is known to have when the unit starts: the first format found in the units
    before it in the same file (as reading the file in one pass would have it), None if none had one."""
    known: dict[int, str | None] = {}
    current: str | None = None
    for unit, count in zip(units, counts, strict=True):
        if unit.kind == "file" or unit.start == 0:
            current = None
        known[unit.index] = current
        current = current or count.format
    return known
