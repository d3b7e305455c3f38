"""How long one rendering may take and how much text it may make: a template is code from a model repository,
and one `{% for %}` over `range(100000)` inside another, or a string doubled in a loop, must cost one record,
not the job.

A `Budget` is one rendering's allowance. Time is enforced twice, so that it holds wherever rendering runs:
`SIGALRM` (`setitimer`) interrupts any Python code when the rendering runs in a process's main thread (the
local engine's workers, a job with one worker, the audit), and the budget's deadline is checked at every loop
step, call and output of the template (`environment`), which needs no signal. The alarm is used only when no
one else handles SIGALRM, and never raises outside a rendering. Size is enforced
before a value is built (`guards`), so `'a' * 10**10` never allocates.
"""

from __future__ import annotations

import _signal
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


# The alarm is set at most once per `timeout` seconds, not twice per rendering (two `setitimer` calls per
# rendering cost ~3% of a job): a rendering that starts while the timer runs keeps it; when it rings, the handler
# raises if the rendering in progress is past its deadline, re-arms for the rest of that rendering's time if one
# is in progress, and otherwise lets the timer stop.
_ringing: list[Budget] = []  # the budget of the rendering in progress, if any
_timer = {"rings_at": 0.0}  # when the armed timer rings (monotonic); 0 = not armed


def _ring(signum: int, frame: Any) -> None:
    _timer["rings_at"] = 0.0
    if not _ringing:
        return
    left = _ringing[0].deadline - time.monotonic()
    if left <= 0:
        raise _ringing[0].timeout()
    _arm(left)


def _arm(seconds: float) -> None:
    seconds = max(seconds, 1e-6)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _timer["rings_at"] = time.monotonic() + seconds


def _alarm_usable() -> bool:
    """Whether SIGALRM is ours to use here: in the main thread, with our handler in place, or installed now when
    nobody else has a handler or a timer. Installed once per process and left in place; a program that installs
    its own handler later gets no alarms from us."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = _signal.getsignal(signal.SIGALRM)  # the raw handler: `signal.getsignal` converts it to an enum
    if handler is _ring:
        return True
    if handler == signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
        signal.signal(signal.SIGALRM, _ring)
        _timer["rings_at"] = 0.0
        return True
    return False


@contextmanager
def alarm(budget: Budget) -> Iterator[None]:
    """SIGALRM by the budget's deadline when `_alarm_usable`; else nothing (the deadline checks in the template's
    loops, calls and outputs still hold). A signal after the rendering ended raises nothing."""
    if not hasattr(signal, "setitimer") or not _alarm_usable():
        yield
        return
    _ringing.append(budget)
    try:
        if not _timer["rings_at"] or _timer["rings_at"] > budget.deadline:  # else it rings in time for this one
            _arm(budget.deadline - time.monotonic())
        yield
    finally:
        _ringing.clear()
