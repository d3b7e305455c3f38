"""Stage 5, mask: the policy that decides what trains. Pure decisions, no text or tokens.

`message_intent` says which messages of a conversation should train; `MaskRules` say which parts of a trained
assistant turn count. The render stage turns both into trained character spans, the tokenize stage into
trained tokens. Defaults follow what SFT wants: every assistant turn's content, reasoning, tool calls and
end-of-turn marker; never the system or user prompt; and the data's own per-message flags (OpenAI `weight`)
win over the role rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas.records import Conversation
from .errors import RecordError
from .templates.plan import MaskRules

MASK_MODES = ("assistant", "last-assistant", "all")


@dataclass(frozen=True)
class MaskPolicy:
    mode: str = "assistant"
    train_roles: tuple[str, ...] = ("assistant",)
    train_end_of_turn: bool = True
    train_reasoning: bool = True
    use_generation_tags: bool = True

    def rules(self) -> MaskRules:
        return MaskRules(
            train_all=self.mode == "all",
            train_end_of_turn=self.train_end_of_turn,
            train_reasoning=self.train_reasoning,
            use_generation_tags=self.use_generation_tags,
        )


def message_intent(conversation: Conversation, policy: MaskPolicy) -> list[bool]:
    """Which messages train. Raises for a conversation that has no assistant turn to learn from."""
    messages = conversation.messages
    if policy.mode == "all":
        return [True] * len(messages)
    assistant_turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not assistant_turns and "assistant" in policy.train_roles:
        roles = ", ".join(m.role for m in messages)
        raise RecordError("no_assistant_turn", f"roles: {roles}")
    if policy.mode == "last-assistant":
        last = assistant_turns[-1] if assistant_turns else -1
        return [i == last and m.train is not False for i, m in enumerate(messages)]
    return [m.train if m.train is not None else m.role in policy.train_roles for m in messages]
