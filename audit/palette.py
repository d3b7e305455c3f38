"""One look for token classes, shared by the terminal and the HTML report, so both read the same way.

Each `TokenClass` gets a label, a color and the role it belongs to (tokens per role are sums over classes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas.classes import TokenClass


@dataclass(frozen=True)
class ClassStyle:
    cls: TokenClass
    label: str
    color: str  # hex, readable as text on white and as a background under black text
    role: str
    meaning: str


STYLES: dict[int, ClassStyle] = {
    s.cls: s
    for s in (
        ClassStyle(TokenClass.TEMPLATE, "template", "#8a8f98", "template", "template text outside messages (BOS...)"),
        ClassStyle(TokenClass.ROLE_HEADER, "header", "#8b7bb8", "template", "role header / generation prompt"),
        ClassStyle(TokenClass.SYSTEM, "system", "#c98a1b", "system", "system prompt"),
        ClassStyle(TokenClass.USER, "user", "#3b82c4", "user", "user message"),
        ClassStyle(TokenClass.TOOL, "tool", "#2a9d8f", "tool", "tool result"),
        ClassStyle(TokenClass.ASSISTANT, "assistant", "#2f9e44", "assistant", "assistant answer"),
        ClassStyle(TokenClass.REASONING, "reasoning", "#9c6ade", "assistant", "assistant reasoning"),
        ClassStyle(TokenClass.TOOL_CALL, "tool_call", "#e07b2e", "assistant", "assistant tool call"),
        ClassStyle(TokenClass.END_OF_TURN, "end_of_turn", "#d6336c", "assistant", "end-of-turn marker"),
        ClassStyle(
            TokenClass.ASSISTANT_MARKUP, "markup", "#c2255c", "assistant", "template text the assistant generates"
        ),
        ClassStyle(TokenClass.TEXT, "text", "#5c6ac4", "text", "plain text document"),
    )
}

ROLES = ("system", "user", "tool", "assistant", "template", "text")

# Classes the model writes in an assistant turn before its end-of-turn marker.
CONTENT_CLASSES = frozenset(
    {TokenClass.ASSISTANT, TokenClass.REASONING, TokenClass.TOOL_CALL, TokenClass.ASSISTANT_MARKUP}
)


def style(cls: int) -> ClassStyle:
    """The style of a class id; an unknown id (a newer schema) shows as template text rather than failing."""
    return STYLES.get(cls) or ClassStyle(TokenClass.TEMPLATE, f"class{cls}", "#8a8f98", "template", "unknown class")


def tint(color: str, amount: float = 0.3) -> str:
    """`color` blended with white: `amount` of the color (for backgrounds under dark text)."""
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    mixed = (round(255 - (255 - c) * amount) for c in (red, green, blue))
    return "#" + "".join(f"{c:02x}" for c in mixed)
