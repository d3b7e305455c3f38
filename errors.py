"""Two kinds of failure: a bad record (rejected, the run goes on) and a bad job (one clear message, exit 2)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any


class RecordError(Exception):
    """This record cannot become a verified example. `reason` is a code from `schemas.reasons`."""

    def __init__(self, reason: str, detail: str = "", field: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.field = field


class SetupError(Exception):
    """The job cannot run as configured (missing input, bad tokenizer path, broken template). Says what to fix."""


def fails_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """For every CLI command: a SetupError becomes one line on stderr and exit code 2, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SetupError as exc:
            print(f"lossmask: error: {exc}", file=sys.stderr)
            sys.exit(2)

    return wrapper
