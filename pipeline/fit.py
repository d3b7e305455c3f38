"""Stage 5, fit: make an example fit `--max-length` positions (cut it, drop it or split it into windows), and never
keep one that trains nothing.

Lengths count positions (input tokens after the shift): an example of n tokens has n - 1 positions, so
`--max-length N` keeps at most N + 1 tokens. This module works on tokens only, for any example. Conversations
first go through `turns`, which drops whole turns (or splits by turns) by rendering the shorter conversation
again, and come here only for what must still be cut inside a turn.

- `truncate`: keep N + 1 tokens, the first ones (`--truncate-side right`, the default) or the last ones (`left`).
  Flags TRUNCATED, and ANSWER_TRUNCATED when a counted target was cut.
- `drop`: the example is dropped (`too_long`).
- `split`: consecutive windows of N positions. Window j holds tokens [jN, jN + N + 1), so consecutive windows
  share one token: the last target of a window is the first input of the next, and every target of the example
  is in exactly one window. Positions restart at 0 in each window (it sees nothing before it). Flag WINDOW;
  `part` numbers the windows.

A result with no counted target is dropped (`no_trainable_tokens`), with its reason, never written.

Preference data (`keeping_answers`): an answer that is compared (a pair) or judged (KTO) is never cut, since the
cut answer would be scored as if it were whole. The prompt is cut from its left end instead (a KTO conversation
first loses its earliest whole turns, in `turns`), and a record whose answer would still be cut is dropped
(`too_long`). `fit_pair` says how much of a pair's prompt is kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import RecordError
from ..schemas.examples import TokenizedExample
from ..schemas.shards import RowFlag

OVERFLOW_POLICIES = ("truncate", "drop", "split")
TRUNCATE_SIDES = ("right", "left")


@dataclass(frozen=True)
class LengthPolicy:
    max_length: int | None = None  # positions per row at most; None = no limit
    overflow: str = "truncate"
    truncate_side: str = "right"  # which end is cut: right keeps the beginning, left keeps the end
    keep_answers: bool = False  # a cut that loses a counted target drops the example (preference data)

    def too_long(self, example: TokenizedExample) -> bool:
        return self.max_length is not None and positions(example) > self.max_length


def positions(example: TokenizedExample) -> int:
    return max(int(example.ids.size) - 1, 0)


def fit(example: TokenizedExample, policy: LengthPolicy) -> list[TokenizedExample | RecordError]:
    """The rows one example becomes under the length policy: examples to write, or drops (with their reason)."""
    if not policy.too_long(example):
        return [_checked(example)]
    if policy.overflow == "drop":
        return [RecordError("too_long", f"{positions(example)} positions > --max-length {policy.max_length}")]
    if policy.overflow == "split":
        return [_checked(window) for window in windows(example, policy)]
    shortened = cut(example, policy)
    if policy.keep_answers and shortened.flags & RowFlag.ANSWER_TRUNCATED:
        return [RecordError("too_long", f"the answer does not fit --max-length {policy.max_length}")]
    return [_checked(shortened)]


def keeping_answers(policy: LengthPolicy) -> LengthPolicy:
    """The length policy of preference data: the same limit, the prompt cut from the left, answers never cut."""
    return dataclasses.replace(policy, truncate_side="left", keep_answers=True)


def fit_pair(prompt: int, chosen: int, rejected: int, policy: LengthPolicy) -> int | RecordError:
    """How many of a pair's `prompt` tokens to keep (its last ones) so that each side, those prompt tokens and its
    `chosen` or `rejected` completion tokens, fits `--max-length` positions; or why the pair is dropped.

    Both sides keep the same prompt tokens, so they still share their first `prompt_length` ids. `--overflow
    drop` drops an over-long pair whole; `truncate` cuts the prompt from the left, and drops the pair when not
    even one prompt token leaves room for the longer completion.
    """
    if policy.max_length is None:
        return prompt
    room = policy.max_length + 1  # tokens per side
    longest = max(chosen, rejected)
    if prompt + longest <= room:
        return prompt
    if policy.overflow == "drop":
        return RecordError("too_long", f"{prompt + longest - 1} positions > --max-length {policy.max_length}")
    if room - longest < 1:
        return RecordError(
            "too_long", f"a completion of {longest} tokens does not fit --max-length {policy.max_length} after a prompt"
        )
    return room - longest


def _checked(example: TokenizedExample) -> TokenizedExample | RecordError:
    if example.ids.size < 2 or not np.any(example.trainable[1:]):
        cut_note = " after truncation" if example.flags & RowFlag.TRUNCATED else ""
        window_note = " in this window" if example.flags & RowFlag.WINDOW else ""
        return RecordError("no_trainable_tokens", f"no counted target{cut_note}{window_note}")
    return example


def cut(example: TokenizedExample, policy: LengthPolicy) -> TokenizedExample:
    """Keep N + 1 tokens on the side `policy.truncate_side` does not cut. Flags what was lost."""
    assert policy.max_length is not None
    keep = policy.max_length + 1
    n = int(example.ids.size)
    if n <= keep:
        return example
    start = n - keep if policy.truncate_side == "left" else 0
    # Targets are tokens 1..n-1. Keeping tokens [start, start + keep) keeps targets start+1 .. start+keep-1.
    lost = np.concatenate([example.trainable[1 : start + 1], example.trainable[start + keep :]])
    flags = example.flags | RowFlag.TRUNCATED
    if lost.any():
        flags |= RowFlag.ANSWER_TRUNCATED
    return _slice(example, start, start + keep, int(flags), example.part)


def windows(example: TokenizedExample, policy: LengthPolicy) -> list[TokenizedExample]:
    """Consecutive windows of N positions (N + 1 tokens, the last shared with the next window)."""
    assert policy.max_length is not None
    width = policy.max_length
    n = int(example.ids.size)
    starts = range(0, n - 1, width)
    flags = int(example.flags | RowFlag.WINDOW)
    return [_slice(example, start, min(start + width + 1, n), flags, part) for part, start in enumerate(starts)]


def _slice(example: TokenizedExample, start: int, end: int, flags: int, part: int) -> TokenizedExample:
    return TokenizedExample(
        ids=example.ids[start:end],
        trainable=example.trainable[start:end],
        classes=example.classes[start:end],
        source=example.source,
        part=part,
        flags=flags,
    )
