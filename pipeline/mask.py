"""The mask policy: the one place that decides which tokens count toward the loss.

Reading this module answers "why did this token train?". The other stages only describe: `templates.plan` says
where each character of a rendering comes from (its message, its `TokenClass`, the assistant turn the model
generates it in), `tokenize` says which characters each token covers. The decisions are these four, in the
order a record meets them:

1. `message_intent`: which messages train. The data's own flag (OpenAI `weight`, LLaMA-Factory `loss_weight`,
   `Message.train`) wins; otherwise `--mask` (`assistant`: the roles in `--train-roles`; `last-assistant`: only
   the last assistant message; `all`: everything) decides.
2. `row_plans`: which rows a conversation becomes, when the template renders some trained assistant turn unlike
   inference (`--unfaithful-turns`): `split` trains each such turn in a row of its own, rendered as the
   conversation up to that turn (or, when the template drops the turn's reasoning even there, as the model
   generates it after the generation prompt); `faithful-only` leaves it untrained; `as-rendered` trains it
   anyway; `reject` refuses the record.
3. `plan`: which characters of a rendering train. In a trained assistant turn, everything the model generates,
   from the end of the generation prompt through its stop sequence, trains, except the classes the policy
   leaves out (`trained_classes`: `--no-train-reasoning`, `--no-train-eot`, `--no-train-tool-calls`); with
   `{% generation %}` blocks (and `--generation-tags`) the blocks' characters say what the model generates
   instead, and the same classes are left out of them. Another role's trained message
   trains its text where it first appears. Message text trains whole or not at all, and only where it first
   appears (a template that repeats text, e.g. in a tool schema, does not train it twice).
4. `tokens_trained`: which tokens train: a token counts when any of its characters counts (a token straddling a
   boundary counts, and its row is flagged STRADDLE); a token with no characters, such as a BOS added by the
   tokenizer's post-processor, counts when its whole row trains (plain text).

Worked example: ChatML, the default policy, `[user "One?", assistant "First."]` renders as

    <|im_start|>user\nOne?<|im_end|>\n<|im_start|>assistant\nFirst.<|im_end|>\n
                                                          ^^^^^^^^^^^^^^^^^^ trained

`message_intent` gives [False, True]; the generation prompt (`render([user], add_generation_prompt=True)`) ends
after `assistant\n`, and the turn ends with the probed end-of-turn marker, so the trained characters are
`First.` (ASSISTANT) and `<|im_end|>` (END_OF_TURN); with `--no-train-eot` only `First.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RecordError
from ..schemas.classes import TokenClass
from ..schemas.records import Conversation, PromptCompletion, Record, TextDocument
from ..schemas.shards import RowFlag
from .templates.plan import Layout, Plan

MASK_MODES = ("assistant", "last-assistant", "all")
UNFAITHFUL_POLICIES = ("split", "faithful-only", "as-rendered", "reject")
_ALL_CLASSES = frozenset(int(c) for c in TokenClass)


@dataclass(frozen=True)
class MaskPolicy:
    mode: str = "assistant"
    train_roles: tuple[str, ...] = ("assistant",)
    train_end_of_turn: bool = True
    train_reasoning: bool = True
    train_tool_calls: bool = True
    use_generation_tags: bool = True
    unfaithful_turns: str = "split"

    def trained_classes(self) -> frozenset[int]:
        """The classes that train inside a trained message (`--mask all`: every class)."""
        if self.mode == "all":
            return _ALL_CLASSES
        left_out = set()
        if not self.train_reasoning:
            left_out.add(int(TokenClass.REASONING))
        if not self.train_end_of_turn:
            left_out.add(int(TokenClass.END_OF_TURN))
        if not self.train_tool_calls:
            left_out.add(int(TokenClass.TOOL_CALL))
        return _ALL_CLASSES - left_out


# 1. messages


def message_intent(record: Record, policy: MaskPolicy, inherited: list[bool] | None = None) -> list[bool]:
    """Which messages train: one flag per message (a text document is one message, a raw prompt/completion two).

    `inherited` is for a conversation shortened to fit `--max-length` (see `turns`): its messages keep the
    decisions made for the whole conversation, so `--mask last-assistant` still means the conversation's last turn.
    Raises for a conversation with no assistant turn to learn from.
    """
    if isinstance(record, TextDocument):
        return [True]
    if isinstance(record, PromptCompletion):
        return [policy.mode == "all", True]
    return _conversation_intent(record, policy, inherited)


def _conversation_intent(conversation: Conversation, policy: MaskPolicy, inherited: list[bool] | None) -> list[bool]:
    messages = conversation.messages
    if policy.mode == "all":
        return [True] * len(messages)
    assistant_turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not assistant_turns and "assistant" in policy.train_roles:
        roles = ", ".join(m.role for m in messages)
        raise RecordError("no_assistant_turn", f"roles: {roles}")
    if inherited is not None:
        return list(inherited)
    if policy.mode == "last-assistant":
        last = assistant_turns[-1] if assistant_turns else -1
        return [i == last and m.train is not False for i, m in enumerate(messages)]
    return [m.train if m.train is not None else m.role in policy.train_roles for m in messages]


# 2. rows


@dataclass(frozen=True)
class RowPlan:
    """One row to make of a conversation: its first `messages` messages rendered, trained as `intent` says."""

    messages: int
    intent: tuple[bool, ...]
    flags: int = 0
    continuation: bool = False  # the last message trains after the generation prompt (see `templates.plan`)


def row_plans(layout: Layout, intent: list[bool], policy: MaskPolicy, template_name: str) -> list[RowPlan]:
    """The rows of a conversation under `--unfaithful-turns` (see the module's docstring)."""
    count = len(intent)
    unfaithful = [t.message for t in layout.turns if intent[t.message] and not t.target_faithful]
    if not unfaithful:
        return [RowPlan(count, tuple(intent))]
    if policy.unfaithful_turns == "reject":
        raise RecordError(
            "template_unfaithful",
            f"{template_name} renders assistant message {unfaithful[0]} differently when it is not the last turn",
        )
    if policy.unfaithful_turns == "as-rendered":
        return [RowPlan(count, tuple(intent), int(RowFlag.UNFAITHFUL_TRAINED))]
    kept = tuple(want and i not in unfaithful for i, want in enumerate(intent))
    if policy.unfaithful_turns == "faithful-only":
        return [RowPlan(count, kept, int(RowFlag.UNFAITHFUL_MASKED))]
    split = int(RowFlag.SPLIT_TURN)
    rows = [
        RowPlan(
            turn + 1, tuple(i == turn for i in range(turn + 1)), split, layout.turns_by_message[turn].needs_continuation
        )
        for turn in unfaithful
    ]
    if any(kept):
        rows.append(RowPlan(count, kept, split))
    return rows


# 3. characters


def plan(layout: Layout, intent: tuple[bool, ...], policy: MaskPolicy) -> Plan:
    """The layout with its trained characters decided: the spans `render` realizes and verifies."""
    use_tags = policy.use_generation_tags and layout.generation is not None
    train = train_characters(layout, intent, policy, use_tags)
    return layout.plan(train, intent, use_tags)


def train_characters(layout: Layout, intent: tuple[bool, ...], policy: MaskPolicy, use_tags: bool) -> np.ndarray:
    """One bool per character of the layout's skeleton: does it train? (rule 3 of the module's docstring)"""
    n = len(layout.skeleton)
    if policy.mode == "all":
        return np.ones(n, dtype=bool)
    train = np.zeros(n, dtype=bool)
    trained_classes = np.fromiter(policy.trained_classes(), dtype=np.uint8)
    for message in layout.placed:
        if not intent[message]:
            continue
        turn = layout.turns_by_message.get(message)
        if turn is None:  # another role's message: its text, where it first appears
            for occurrence in layout.first_occurrences_of(message):
                train[occurrence.start : occurrence.end] = True
        elif use_tags:  # the template's {% generation %} blocks say what the model generates
            train[turn.start : turn.end] = False
            for a, b in layout.generation or ():
                # Never outside the turn: not the generation prompt's header, not text after the stop sequence.
                a, b = max(a, turn.start), min(b, turn.end)
                if b > a:
                    train[a:b] = np.isin(layout.labels.cls[a:b], trained_classes)
        else:  # everything generated in the turn, but the classes the policy leaves out
            train[turn.start : turn.end] = np.isin(layout.labels.cls[turn.start : turn.end], trained_classes)
    for k, occurrence in enumerate(layout.occurrences):  # message text trains whole, and only where it first appears
        window = slice(occurrence.start, occurrence.end)
        train[window] = layout.first_occurrence[k] and bool(train[window].any())
    return train


def class_trains(policy: MaskPolicy, cls: TokenClass, message_trains: bool) -> bool:
    """Rule 3 for text `render` labels itself (reasoning written into content in <think> tags)."""
    return message_trains and int(cls) in policy.trained_classes()


def appended_eos_trains(policy: MaskPolicy, cls: TokenClass) -> bool:
    """The EOS appended to plain text (class TEXT) and raw completions (END_OF_TURN, so `--no-train-eot` masks it):
    how the model learns to stop."""
    return class_trains(policy, cls, True)


# 4. tokens


def tokens_trained(trained_chars: np.ndarray, zero_width: np.ndarray, row_all_trained: np.ndarray) -> np.ndarray:
    """Rule 4: per token, from the number of trained characters it covers, whether it has no characters at all,
    and whether every character of its row trains."""
    return (trained_chars > 0) | (zero_width & row_all_trained)
