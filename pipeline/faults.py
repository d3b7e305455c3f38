"""Crash injection for the resume tests: `LOSSMASK_CRASH_AT=point:n` kills the process (SIGKILL, like kill -9)
the n-th time it passes `point`; `point:n:enospc` raises the OSError of a full disk there instead (for machines
where a test cannot mount a small tmpfs). Unset, `crash_point` is one dictionary lookup.

Points: `shard-half-written` (a shard's temporary file holds part of its rows), `shard-renamed` (the shard is
complete but no checkpoint names it yet), `checkpoint-saved`.

Record faults for the isolation tests: `LOSSMASK_FAULT_AT=stage` makes `record_fault(stage, raw)` raise a
`RuntimeError` (an exception no stage expects) for every record whose value contains `FAULT_MARKER`. Stages:
`read`, `parse`, `render`, `tokenize`, `fit`, `shift`. Unset, it is one string comparison.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

_TARGET = os.environ.get("LOSSMASK_CRASH_AT", "")
_FAULT_STAGE = os.environ.get("LOSSMASK_FAULT_AT", "")
FAULT_MARKER = "lossmask-fault"
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _TARGET:
        return
    point, _, rest = _TARGET.partition(":")
    if point != name:
        return
    count, _, mode = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(count or 1):
        if mode == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


def record_fault(stage: str, raw: Any) -> None:
    """Raise in `stage` for a record marked with FAULT_MARKER, when LOSSMASK_FAULT_AT names the stage."""
    if _FAULT_STAGE and stage == _FAULT_STAGE and FAULT_MARKER in repr(raw.value):
        raise RuntimeError(f"fault injected in {stage}")
