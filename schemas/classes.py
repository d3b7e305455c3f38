"""Token classes: what each token of a rendered example is, so that masks are a policy over classes.

The class is stored per target token in the `token_class` column (uint8). Masking reads it; the audit shows
it; a lint that asks "is the end-of-turn marker trained?" is a query over it.
"""

from __future__ import annotations

from enum import IntEnum


class TokenClass(IntEnum):
    TEMPLATE = 0  # template text outside any message: BOS, default system prompt, tool schemas, separators
    ROLE_HEADER = 1  # the text that opens a message (role markers, the generation prompt)
    SYSTEM = 2  # system message content
    USER = 3  # user message content (and a raw prompt)
    TOOL = 4  # tool / function result content
    ASSISTANT = 5  # assistant message content (and a raw completion)
    REASONING = 6  # assistant reasoning: reasoning_content, <think> blocks
    TOOL_CALL = 7  # assistant tool-call text: function names, arguments and their wrappers
    END_OF_TURN = 8  # the marker ending an assistant turn (<|im_end|>, <|eot_id|>, </s>...) and whitespace before it
    ASSISTANT_MARKUP = 9  # other template text the model itself generates in its turn (e.g. gpt-oss channel tags)
    TEXT = 10  # plain-text (pretraining) document

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_CONTENT_CLASS = {
    "system": TokenClass.SYSTEM,
    "user": TokenClass.USER,
    "tool": TokenClass.TOOL,
    "assistant": TokenClass.ASSISTANT,
}

# Classes the model itself produces in an assistant turn: what `--mask assistant` trains.
GENERATED_CLASSES = frozenset(
    {
        TokenClass.ASSISTANT,
        TokenClass.REASONING,
        TokenClass.TOOL_CALL,
        TokenClass.END_OF_TURN,
        TokenClass.ASSISTANT_MARKUP,
    }
)
