"""What pytest itself needs for the whole suite. Helpers shared by tests live in `support.py`.

Importing `support` here exports LOSSMASK_REALWORLD once for the session, so every helper that looks the kit up
(including those run in subprocesses) finds the same one.
"""

from __future__ import annotations

from . import support  # noqa: F401
