"""Lengths for conversations, by whole turns: what `--overflow truncate` and `split` do to an over-long chat record.

A conversation is its leading system messages (always kept) and then *exchanges*: an exchange starts at a user
message and runs until the next one (the user's message, the assistant's answer, its tool calls and their
results), so dropping or regrouping whole exchanges never separates a tool result from its call, and every
shortened conversation still starts with a user turn as templates expect.

- `truncate` (turn-aware): drop the fewest earliest exchanges so that every row fits, never the exchange that holds
  the last trained message; only when the system prompt and that last exchange still do not fit is a row cut
  inside a turn (`fit.cut`, on `--truncate-side`). Rows are flagged TURNS_DROPPED and TRUNCATED.
- `split`: the exchanges are grouped, in order, into the fewest consecutive runs that fit, each with the system
  prompt, greedily from the start; each run becomes its own rows, flagged WINDOW. Every exchange is in exactly one
  run, so every trained turn trains once, with the turns before it in its run as context. A single exchange that
  does not fit alone is cut as by `truncate`.

The shorter conversations are **rendered and tokenized again**, never cut out of the full rendering's tokens: a
template need not be prefix-stable (Mistral moves the system prompt into the first user turn, Qwen3 drops old
reasoning, Llama 3 prints a date header first), so only a fresh rendering is the text the model would see for
that conversation. The row equals what `prepare` writes for the shortened conversation itself (tested). Plans are
cached per conversation shape, so this costs a render and an encode per try; the fewest exchanges to drop is
found by bisection (lengths shrink as exchanges are dropped), so a record costs O(log turns) tries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RecordError
from ..schemas.examples import TokenizedExample
from ..schemas.records import Conversation
from ..schemas.shards import RowFlag
from .fit import LengthPolicy, fit
from .mask import MaskPolicy, message_intent

# Render + tokenize a shortened conversation whose messages keep the given training decisions; raises RecordError.
Encode = Callable[[Conversation, list[bool]], list[TokenizedExample]]
Result = list[TokenizedExample | RecordError]  # rows to write, or row drops with their reason

_DROPPED = int(RowFlag.TURNS_DROPPED | RowFlag.TRUNCATED)
_WINDOW = int(RowFlag.WINDOW)


@dataclass(frozen=True)
class Exchanges:
    """Where a conversation's exchanges start: exchange j is messages[starts[j]:starts[j + 1]]."""

    lead: int  # the leading system messages, messages[:lead]
    starts: list[int]
    count: int  # number of messages

    def end(self, j: int) -> int:
        return self.starts[j + 1] if j + 1 < len(self.starts) else self.count

    def holding(self, message: int) -> int:
        """The exchange that holds `message`, or -1 for a leading system message."""
        found = -1
        for j, start in enumerate(self.starts):
            if start <= message:
                found = j
        return found


def exchanges(conversation: Conversation) -> Exchanges:
    messages = conversation.messages
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    starts = [lead] if lead < len(messages) else []
    starts += [i for i in range(lead + 1, len(messages)) if messages[i].role == "user"]
    return Exchanges(lead=lead, starts=starts, count=len(messages))


def sub_conversation(
    conversation: Conversation, parts: Exchanges, first: int, stop: int, intent: list[bool]
) -> tuple[Conversation, list[bool]]:
    """The system prompt and exchanges [first, stop), and the training decision each of their messages had in the
    whole conversation (which they keep: `--mask last-assistant` still means the conversation's last turn)."""
    indices = [*range(parts.lead), *range(parts.starts[first], parts.end(stop - 1))]
    messages = [conversation.messages[i] for i in indices]
    shortened = Conversation(messages=messages, source=conversation.source, tools=conversation.tools)
    return shortened, [intent[i] for i in indices]


def fit_conversation(
    conversation: Conversation,
    examples: list[TokenizedExample],
    policy: LengthPolicy,
    mask: MaskPolicy,
    encode: Encode,
) -> Result:
    """The rows of a chat record under the length policy (see the module's docstring)."""
    if policy.overflow == "drop" or not any(policy.too_long(e) for e in examples):
        return [row for example in examples for row in fit(example, policy)]
    parts = exchanges(conversation)
    if not parts.starts:  # only system messages (--mask all): no turn to drop or regroup, so cut
        cut = dataclasses.replace(policy, overflow="truncate")
        return [row for example in examples for row in fit(example, cut)]
    intent = message_intent(conversation, mask)
    tries = _Tries(conversation, parts, intent, encode, policy)
    tries.known[(0, len(parts.starts))] = examples
    if policy.overflow == "split":
        return _split(tries, policy)
    return _truncate(tries, policy)


class _Tries:
    """Encodings of shortened conversations, each made once: (first, stop) exchanges -> rows, or the error."""

    def __init__(
        self, conversation: Conversation, parts: Exchanges, intent: list[bool], encode: Encode, policy: LengthPolicy
    ):
        self.conversation = conversation
        self.parts = parts
        self.intent = intent
        self.encode = encode
        self.policy = policy
        self.known: dict[tuple[int, int], list[TokenizedExample] | RecordError] = {}

    def rows(self, first: int, stop: int) -> list[TokenizedExample] | RecordError:
        key = (first, stop)
        if key not in self.known:
            try:
                self.known[key] = self.encode(
                    *sub_conversation(self.conversation, self.parts, first, stop, self.intent)
                )
            except RecordError as exc:
                self.known[key] = exc
        return self.known[key]

    def fits(self, first: int, stop: int) -> bool:
        rows = self.rows(first, stop)
        return not isinstance(rows, RecordError) and not any(self.policy.too_long(r) for r in rows)


def _truncate(tries: _Tries, policy: LengthPolicy) -> Result:
    count = len(tries.parts.starts)
    trained = [i for i, wanted in enumerate(tries.intent) if wanted]
    droppable = tries.parts.holding(trained[-1]) if trained else 0  # exchanges before the last trained one
    whole = tries.known[(0, count)]
    assert not isinstance(whole, RecordError)
    chosen: list[TokenizedExample] = whole
    if droppable > 0:
        if tries.fits(droppable, count):
            low, high = 1, droppable  # the fewest dropped exchanges that fit: fits(high) holds throughout
            while low < high:
                middle = (low + high) // 2
                if tries.fits(middle, count):
                    high = middle
                else:
                    low = middle + 1
            shortest = tries.rows(high, count)
        else:
            shortest = tries.rows(droppable, count)  # the system prompt and the last exchange: cut inside below
        if not isinstance(shortest, RecordError):
            chosen = [_flagged(row, _DROPPED) for row in shortest]
    cut = dataclasses.replace(policy, overflow="truncate")
    return [row for example in chosen for row in fit(example, cut)]


def _split(tries: _Tries, policy: LengthPolicy) -> Result:
    count = len(tries.parts.starts)
    cut = dataclasses.replace(policy, overflow="truncate")
    out: Result = []
    first = 0
    while first < count:
        stop = first + 1
        if tries.fits(first, stop):
            high = count  # the most exchanges from `first` that fit: fits(stop) holds throughout
            while stop < high:
                middle = (stop + high + 1) // 2
                if tries.fits(first, middle):
                    stop = middle
                else:
                    high = middle - 1
        rows = tries.rows(first, stop)
        if isinstance(rows, RecordError):
            # A run with nothing to train (e.g. a trailing user turn with no answer) is a dropped row, like any other.
            reason = "no_trainable_tokens" if rows.reason == "no_assistant_turn" else rows.reason
            out.append(RecordError(reason, rows.detail))
        else:
            for row in rows:
                out.extend(fit(_flagged(row, _WINDOW), cut))
        first = stop
    part = 0
    for row in out:
        if isinstance(row, TokenizedExample):
            row.part, part = part, part + 1
    return out


def _flagged(example: TokenizedExample, flags: int) -> TokenizedExample:
    return dataclasses.replace(example, flags=int(example.flags | flags))
