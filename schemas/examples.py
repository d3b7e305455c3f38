"""What flows between the stages for one example: rendered text with labeled character spans, then tokens.

render -> `RenderedExample` (characters) -> tokenize -> `TokenizedExample` (tokens) -> fit -> shift -> a row.
Keeping the class of every character, and then of every token, is what makes the mask auditable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .records import SourceRef


@dataclass(slots=True)
class CharSpan:
    """Characters [start, end) of the rendered text: their TokenClass, whether they train, and their message."""

    start: int
    end: int
    cls: int
    trainable: bool
    message: int = -1  # index of the message they belong to, -1 for template text outside messages


@dataclass(slots=True)
class RenderedExample:
    text: str
    spans: list[CharSpan]  # cover the text in order, without gaps or overlaps
    source: SourceRef
    data_spans: list[tuple[int, int]] = field(default_factory=list)  # message text: control tokens here are data
    turns: list[tuple[int, int]] = field(default_factory=list)  # trained character ranges, one per trained turn
    part: int = 0
    flags: int = 0
    add_special_tokens: bool = False  # let the tokenizer's post-processor add BOS (plain text, raw prompts)
    append_eos: bool = False  # end with the EOS token (plain text, raw completions)
    eos_trains: bool = True  # whether that EOS (or the appended stop) counts (decided by the mask policy)
    # The stop token the model must emit after the row's final turn where the template writes it only before a
    # next message (GLM: `<|user|>`, `<|observation|>`); appended and trained like an EOS.
    append_stop: str | None = None
    escape: bool = False  # data spans hold control-token strings that must be encoded as plain text


@dataclass(slots=True)
class TokenizedExample:
    ids: np.ndarray  # int32, all n tokens of the example
    trainable: np.ndarray  # uint8, 1 where the token is a target that counts
    classes: np.ndarray  # uint8 TokenClass per token
    source: SourceRef
    part: int = 0
    flags: int = 0
