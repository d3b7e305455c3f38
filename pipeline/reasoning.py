"""Reasoning written into an assistant message's content: a think block (`<think>…</think>`) at its start.

Reasoning reaches lossmask three ways: a field (`reasoning_content`, `reasoning`, `thinking`), LLaMA-Factory
content parts of type `reasoning`, or, in most distillation data, inside the content:

    "<think>\\nFirst, 17 is prime...\\n</think>\\n\\nYes, 17 is prime."

What the template does with it decides what `render` does (see `template_messages`):
- the template renders `reasoning_content` (Qwen3, GLM-4.5, gpt-oss): the block is split off into the message's
  reasoning exactly as those templates split it themselves (the text between the tags without its surrounding
  newlines; the answer after the closing tag without its leading newlines), and the template renders it the
  way the model sees it;
- otherwise the content stays as it is, and its block is a `ThinkFrame` around the reasoning: the tags are
  template markup (labeled reasoning, never data, so they may be control tokens of the tokenizer), the text
  between them is the reasoning. Templates that cut the block out of earlier turns (QwQ) or of every turn
  (DeepSeek-R1) show it in their sentinel rendering, and those turns are trained as the model generates them.

The tags are the template's own (`<seed:think>` for Seed-OSS), else `<think>` and `</think>`, or `--reasoning-tags`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tag pairs known from model templates, tried in order against the template's source.
KNOWN_TAGS: tuple[tuple[str, str], ...] = (
    ("<seed:think>", "</seed:think>"),
    ("◁think▷", "◁/think▷"),
    ("<think>", "</think>"),
)


@dataclass(frozen=True)
class ReasoningTags:
    open: str = "<think>"
    close: str = "</think>"

    @classmethod
    def parse(cls, spec: str) -> ReasoningTags:
        """`--reasoning-tags '<think>,</think>'`."""
        opening, _, closing = spec.partition(",")
        if not opening.strip() or not closing.strip():
            raise ValueError(f"--reasoning-tags takes 'OPEN,CLOSE', e.g. '<think>,</think>', not {spec!r}")
        return cls(opening.strip(), closing.strip())

    @classmethod
    def for_template(cls, source: str | None) -> ReasoningTags:
        for opening, closing in KNOWN_TAGS:
            if source and opening in source and closing in source:
                return cls(opening, closing)
        return cls()


@dataclass(frozen=True)
class ThinkFrame:
    """Content = `before + reasoning + between + answer`: `before` is the opening tag and what follows it up to
    the reasoning, `between` the closing tag with the whitespace around it."""

    before: str
    between: str


def split_think_block(content: str, tags: ReasoningTags) -> tuple[ThinkFrame, str, str] | None:
    """(frame, reasoning, answer) when `content` starts with exactly one think block, else None.

    The reasoning is the text between the tags without its surrounding newlines and the answer the text after
    the closing tag without its leading newlines, as Qwen3 and GLM-4.5 split it
    (`content.split(close)[0].rstrip('\\n').split(open)[-1].lstrip('\\n')`); the frame keeps what was cut, so
    `frame.before + reasoning + frame.between + answer == content`.
    """
    if not content.startswith(tags.open) or content.count(tags.open) != 1 or content.count(tags.close) != 1:
        return None
    close = content.index(tags.close)
    inner = content[len(tags.open) : close]
    reasoning = inner.strip("\n")
    lead = len(inner) - len(inner.lstrip("\n"))
    rest = content[close + len(tags.close) :]
    answer = rest.lstrip("\n")
    before = content[: len(tags.open) + lead]
    between = content[len(before) + len(reasoning) : len(content) - len(answer)]
    return ThinkFrame(before, between), reasoning, answer


def inline_frame(tags: ReasoningTags) -> ThinkFrame:
    """The block a reasoning field is written in when the template ignores reasoning: `<think>\\nR\\n</think>\\n\\n`."""
    return ThinkFrame(f"{tags.open}\n", f"\n{tags.close}\n\n")
