"""SIGTERM and SIGINT stop a job cleanly: one line, the checkpoint left to resume from, exit 128 + the signal.

A scheduler's SIGTERM or a user's Ctrl-C must not leave a traceback, nor a half-told story. The handler only
notes the signal: raising from it could interrupt the engine inside a lock it then needs to stop its workers.
The job calls `check_stop` after each batch (`jobs.prepare`), which raises `JobStopped` (a `BaseException`, so no
`except Exception` on the way swallows it); the engine kills its workers as it unwinds (`engines.local`), the
output lock is released, and the CLI prints what happened. A job so stops within one batch of the signal.
Nothing is lost: the last checkpoint names every finished shard, and the same command resumes from it, byte for
byte. A second signal while stopping gets the default action (the process dies; the checkpoint still holds).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobStopped(BaseException):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_requested: list[int] = []  # the signal received, if any


def _stop(signum: int, frame: FrameType | None) -> None:
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)
    _requested.append(signum)


def check_stop() -> None:
    """Raise `JobStopped` when a stop signal has arrived (see the module docstring); else nothing, at once."""
    if _requested:
        raise JobStopped(_requested[0])


@contextmanager
def stops_cleanly() -> Iterator[None]:
    """Run the block with SIGTERM/SIGINT turned into `JobStopped`; on one, print a line and exit 128 + signal."""
    previous = {stop: signal.signal(stop, _stop) for stop in STOP_SIGNALS}
    _requested.clear()
    try:
        yield
    except JobStopped as stopped:
        name = signal.Signals(stopped.signum).name
        print(
            f"lossmask: stopped by {name}; finished shards are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + stopped.signum)
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
