"""The job's `JobContext`, built once in the local engine's forkserver, before it forks any worker.

`local.start_server` starts the forkserver with this module in its preload and the job's config in
`LOSSMASK_FORKSERVER_CONFIG` (removed from the main process's environment at once): the server builds the
context (tokenizer, fast encoder and its probe, template, plans; ~0.3 s), and every worker it forks starts with
it, instead of each building its own. A worker uses it only for the same config and the same tokenizer and
template files (`signature`: their paths, sizes and modification times); otherwise, and whenever building it here
failed, it builds its own as before, and reports what is wrong the same way. A forkserver lives as long as the
process that started it, so a later job of the same process finds an older job's context here, and builds its own.
"""

from __future__ import annotations

import base64
import gc
import os
import pickle
from pathlib import Path
from typing import Any

ENV = "LOSSMASK_FORKSERVER_CONFIG"

CONTEXT: tuple[Any, tuple[Any, ...], Any] | None = None  # (config, signature, JobContext)


def signature(config: Any) -> tuple[Any, ...] | None:
    """The files the context is built from, as (path, size, mtime, inode); None when they cannot be named here (a
    Hub id: its files are found only while loading)."""
    paths = [Path(config.tokenizer)]
    if config.chat_template:
        paths.append(Path(config.chat_template))
    found = []
    for k, path in enumerate(paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            files = [path]
        elif k == 0:
            return None
        else:  # a built-in template name
            continue
        for file in files:
            stat = file.stat()
            found.append((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(found)


def context_for(config: Any) -> Any:
    """The context built here, when it was built for this config from the same files; else None."""
    if CONTEXT is None:
        return None
    built_for, files, context = CONTEXT
    if files is None or built_for != config or signature(config) != files:
        return None
    return context


def _build() -> None:
    global CONTEXT
    data = os.environ.pop(ENV, None)
    if not data:
        return
    os.environ["RAYON_NUM_THREADS"] = "1"  # as in every worker: no tokenizer thread pool before the forks
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        from ..pipeline.batch import JobContext

        config = pickle.loads(base64.b64decode(data))
        files = signature(config)
        if files is not None:
            CONTEXT = (config, files, JobContext.from_config(config))
            gc.freeze()  # as the workers do: the context lives as long as they do
    except Exception:  # the workers build their own, and say what is wrong
        CONTEXT = None


_build()
