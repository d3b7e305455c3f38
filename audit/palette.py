"""One look for token classes, shared by the terminal and the HTML report, so both read the same way.

Each `TokenClass` gets a label, a color and the role it belongs to (tokens per role are sums over classes).
The classes an assistant turn is made of besides its answer (reasoning, tool calls, the stop sequence) and the
tool output it reads are `DISTINCT_CLASSES`: a reader must tell them apart at a glance, so they also get a named
HTML class (`css`), reasoning is italic, and the colors of the classes that meet in one turn are far apart
(tested as a color difference, CIE76 delta E >= 40; any two classes >= 20).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas.classes import GENERATED_CLASSES, TokenClass


@dataclass(frozen=True)
class ClassStyle:
    cls: TokenClass
    label: str
    color: str  # hex, readable as text on white and as a background under black text
    role: str
    meaning: str
    css: str = ""  # a named HTML class for the token spans of `DISTINCT_CLASSES` (besides `c{id}`)
    italic: bool = False


STYLES: dict[int, ClassStyle] = {
    s.cls: s
    for s in (
        ClassStyle(TokenClass.TEMPLATE, "template", "#8a8f98", "template", "template text outside messages (BOS...)"),
        ClassStyle(TokenClass.ROLE_HEADER, "header", "#8b7bb8", "template", "role header / generation prompt"),
        ClassStyle(TokenClass.SYSTEM, "system", "#b8860b", "system", "system prompt"),
        ClassStyle(TokenClass.USER, "user", "#3b82c4", "user", "user message"),
        ClassStyle(TokenClass.TOOL, "tool_output", "#2a9d8f", "tool", "tool output (a tool's result)", "tool-output"),
        ClassStyle(TokenClass.ASSISTANT, "assistant", "#2f9e44", "assistant", "assistant answer"),
        ClassStyle(
            TokenClass.REASONING, "reasoning", "#9c6ade", "assistant", "assistant reasoning", "reasoning", italic=True
        ),
        ClassStyle(TokenClass.TOOL_CALL, "tool_call", "#e8590c", "assistant", "assistant tool call", "tool-call"),
        ClassStyle(
            TokenClass.END_OF_TURN, "end_of_turn", "#d6336c", "assistant", "stop: end-of-turn marker", "end-of-turn"
        ),
        ClassStyle(
            TokenClass.ASSISTANT_MARKUP, "markup", "#9a7b5f", "assistant", "template text the assistant generates"
        ),
        ClassStyle(TokenClass.TEXT, "text", "#5c6ac4", "text", "plain text document"),
    )
}

ROLES = ("system", "user", "tool", "assistant", "template", "text")

# Classes the model writes in an assistant turn before its end-of-turn marker.
CONTENT_CLASSES = frozenset(
    {TokenClass.ASSISTANT, TokenClass.REASONING, TokenClass.TOOL_CALL, TokenClass.ASSISTANT_MARKUP}
)

# Shown and counted apart from the answer everywhere: reasoning, tool calls, tool output and the stop sequence.
DISTINCT_CLASSES = (TokenClass.REASONING, TokenClass.TOOL_CALL, TokenClass.TOOL, TokenClass.END_OF_TURN)

# The classes the legends show in their counted look: what an assistant turn can train.
COUNTED_LEGEND = tuple(sorted(GENERATED_CLASSES))


def style(cls: int) -> ClassStyle:
    """The style of a class id; an unknown id (a newer schema) shows as template text rather than failing."""
    return STYLES.get(cls) or ClassStyle(TokenClass.TEMPLATE, f"class{cls}", "#8a8f98", "template", "unknown class")


def tint(color: str, amount: float = 0.3) -> str:
    """`color` blended with white: `amount` of the color (for backgrounds under dark text)."""
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    mixed = (round(255 - (255 - c) * amount) for c in (red, green, blue))
    return "#" + "".join(f"{c:02x}" for c in mixed)
