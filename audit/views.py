"""Rows as the audit shows them: every token with its text, class and whether it counts.

A row stores targets: `token_class[k]` and `loss_mask[k]` describe `target_ids[k]`, the token at position
k + 1 of the full sequence `input_ids + [target_ids[-1]]`. The view lists all n + 1 tokens of that sequence;
the first one is only ever read, never predicted, so it has no class and never counts.

Token text: a token alone does not always decode to its share of the text (SentencePiece drops the leading
space of the first token of a decode; byte-level BPE splits one character across tokens). So each token's
text is the difference between decoding a short window ending with it and the same window without it, with
unfinished characters (U+FFFD at the end) left to the token that completes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..errors import SetupError
from ..pipeline.tokenizer import TokenizerInfo
from .palette import style

WINDOW = 8  # tokens of left context per decode; a character spans at most 4 byte-level tokens
REPLACEMENT = "\ufffd"


@dataclass
class TokenView:
    id: int
    text: str
    cls: int | None  # None for the first token of the row (not a target)
    counted: bool

    @property
    def label(self) -> str:
        return "first token (read, never predicted)" if self.cls is None else style(self.cls).label


@dataclass
class RowView:
    row: int
    source: str
    part: int
    flags: int
    num_tokens: int
    num_loss_tokens: int
    tokens: list[TokenView]
    marks: dict[int, list[str]] = field(default_factory=dict)  # token index -> lint codes pointing at it

    @property
    def counted(self) -> int:
        return sum(token.counted for token in self.tokens)

    def lesson(self) -> list[tuple[int, str, TokenView]]:
        """(position, context text, next token) for each position: what the model reads, what it must predict."""
        out = []
        context = self.tokens[0].text
        for k, token in enumerate(self.tokens[1:]):
            out.append((k, context, token))
            context += token.text
        return out


def token_texts(tokenizer: TokenizerInfo | None, ids: list[int]) -> list[str]:
    if tokenizer is None:
        return [f"⟨{i}⟩" for i in ids]
    decode = tokenizer.tokenizer.decode
    texts = []
    for k in range(len(ids)):
        start = max(0, k - WINDOW)
        before = decode(ids[start:k], skip_special_tokens=False).rstrip(REPLACEMENT) if k > start else ""
        after = decode(ids[start : k + 1], skip_special_tokens=False).rstrip(REPLACEMENT)
        common = 0
        limit = min(len(before), len(after))
        while common < limit and before[common] == after[common]:
            common += 1
        texts.append(after[common:])
    return texts


def fetch_rows(frame: pl.LazyFrame, rows: list[int], total: int) -> list[dict[str, Any]]:
    """The given rows (in the given order); an index out of range is a setup error that names the range."""
    for row in rows:
        if not 0 <= row < total:
            raise SetupError(f"row {row} does not exist: the audited rows are 0..{total - 1}")
    if not rows:
        return []
    fetched = pl.concat([frame.slice(row, 1) for row in rows]).collect()
    return fetched.to_dicts()


def build_view(row: int, data: dict[str, Any], tokenizer: TokenizerInfo | None) -> RowView:
    ids = [*data["input_ids"], data["target_ids"][-1]]
    texts = token_texts(tokenizer, ids)
    tokens = [TokenView(ids[0], texts[0], None, False)]
    for k, (cls, counted) in enumerate(zip(data["token_class"], data["loss_mask"], strict=True)):
        tokens.append(TokenView(ids[k + 1], texts[k + 1], int(cls), bool(counted)))
    return RowView(
        row=row,
        source=data["source"],
        part=int(data["part"]),
        flags=int(data["flags"]),
        num_tokens=int(data["num_tokens"]),
        num_loss_tokens=int(data["num_loss_tokens"]),
        tokens=tokens,
    )
