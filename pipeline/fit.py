"""Stage 6, fit: make an example fit `--max-length` positions, or drop it, and never keep one that trains nothing.

Lengths count positions (input tokens after the shift): an example of n tokens has n - 1 positions, so
`--max-length N` keeps at most N + 1 tokens. `truncate` cuts on the right; `drop` drops the example. Either way
an example left with no counted target is dropped, with its reason, never written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schemas.examples import TokenizedExample
from ..schemas.shards import RowFlag
from .errors import RecordError

OVERFLOW_POLICIES = ("truncate", "drop")


@dataclass(frozen=True)
class LengthPolicy:
    max_length: int | None = None
    overflow: str = "truncate"


def fit(example: TokenizedExample, policy: LengthPolicy) -> TokenizedExample:
    positions = example.ids.size - 1
    if policy.max_length is not None and positions > policy.max_length:
        if policy.overflow == "drop":
            raise RecordError("too_long", f"{positions} positions > --max-length {policy.max_length}")
        keep = policy.max_length + 1
        flags = example.flags | RowFlag.TRUNCATED
        if example.trainable[keep:].any():
            flags |= RowFlag.ANSWER_TRUNCATED
        example = TokenizedExample(
            ids=example.ids[:keep],
            trainable=example.trainable[:keep],
            classes=example.classes[:keep],
            source=example.source,
            part=example.part,
            flags=int(flags),
            turn_ends=[min(end, keep) for end in example.turn_ends],
        )
    if example.ids.size < 2 or not np.any(example.trainable[1:]):
        cut = " after truncation" if example.flags & RowFlag.TRUNCATED else ""
        raise RecordError("no_trainable_tokens", f"no counted target{cut}")
    return example
