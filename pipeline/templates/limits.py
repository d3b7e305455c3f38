"""How long one rendering may take and how much text it may make: a template is code from a model repository,
and one `{% for %}` over `range(100000)` inside another, or a string doubled in a loop, must cost one record,
not the job.

A `Budget` is one rendering's allowance. Time is enforced twice, so that it holds wherever rendering runs:
`SIGALRM` (`setitimer`) interrupts any Python code when the rendering runs in a process's main thread (the
local engine's workers, a job with one worker, the audit), and the budget's deadline is checked at every loop
step, call and output of the template (`environment`), which needs no signal. The alarm is set only when no
other timer is running, and is always disarmed, and the previous handler put back, before the rendering
returns or raises. Size is enforced before a value is built (`guards`), so `'a' * 10**10` never allocates.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 5.0  # seconds per rendering; real templates take milliseconds
# Characters in one rendering. Above any record that passes max_record_bytes and max_message_chars, with room
# for markup; what it costs downstream is tokenizing: ~150 bytes per character, so ~1.2 GB at the limit.
DEFAULT_MAX_CHARS = 8 << 20
# What a rendering may produce along the way, counted at every output (macros and `{% set %}` blocks included,
# whose text may be output again): this many times `max_chars`.
PRODUCED_FACTOR = 4


@dataclass(frozen=True)
class RenderLimits:
    timeout: float = DEFAULT_TIMEOUT
    max_chars: int = DEFAULT_MAX_CHARS


class LimitExceeded(BaseException):
    """A rendering ran out of its budget. A BaseException, so that nothing a template calls (a filter catching
    `Exception`) can swallow it on the way out; `ChatTemplate` turns it into the record's `RecordError`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Budget:
    """One rendering's deadline and the characters it has produced."""

    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout
        self.produced = 0
        self.max_chars = limits.max_chars
        self.max_produced = PRODUCED_FACTOR * limits.max_chars

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.timeout()

    def timeout(self) -> LimitExceeded:
        return LimitExceeded("template_timeout", f"the rendering took longer than {self.limits.timeout:g} s")

    def check_size(self, size: int, what: str) -> None:
        """Refuse a value of `size` characters (or items) before it is built, or once it is."""
        if size > self.max_chars:
            detail = f"{what} would be {size:,} long; template_max_chars is {self.max_chars:,}"
            raise LimitExceeded("template_output_too_large", detail)

    def produce(self, text: str) -> str:
        """Count text a template outputs, anywhere; returns it."""
        self.produced += len(text)
        if self.produced > self.max_produced:
            detail = (
                f"the template produced over {self.max_produced:,} characters along the way "
                f"({PRODUCED_FACTOR} x template_max_chars)"
            )
            raise LimitExceeded("template_output_too_large", detail)
        if time.monotonic() > self.deadline:
            raise self.timeout()
        return text

    def guard(self, items: Iterable[Any]) -> Iterator[Any]:
        """The items of a template loop, with the deadline checked before each."""
        deadline = self.deadline
        for item in items:
            if time.monotonic() > deadline:
                raise self.timeout()
            yield item


@contextmanager
def alarm(budget: Budget) -> Iterator[None]:
    """SIGALRM at the budget's deadline, in the main thread when no other interval timer is running; else
    nothing (the deadline checks in the template's loops, calls and outputs still hold)."""
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
        or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0)
    ):
        yield
        return
    armed = True

    def ring(signum: int, frame: Any) -> None:
        if armed:  # a signal handled after the rendering ended is no timeout of it
            raise budget.timeout()

    previous = signal.signal(signal.SIGALRM, ring)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(budget.deadline - time.monotonic(), 1e-6))
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
