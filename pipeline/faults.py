"""Crash injection for the resume tests: `LOSSMASK_CRASH_AT=point:n` kills the process (SIGKILL, like kill -9)
the n-th time it passes `point`. Unset, `crash_point` is one dictionary lookup.

Points: `shard-half-written` (a shard's temporary file holds part of its rows), `shard-renamed` (the shard is
complete but no checkpoint names it yet), `checkpoint-saved`.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("LOSSMASK_CRASH_AT", "")
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _TARGET:
        return
    point, _, count = _TARGET.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
