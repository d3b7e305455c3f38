"""`lossmask audit` of pair shards (the `pairs` layout): pairs shown side by side with their counted tokens, and
the lints that only a pair has.

The SFT report (`report`, `lints`) reads SFT rows; a pair folder is read here instead, through the same
`ShardSet` checks, with the lints' own result types (`lints.LintSpec`, `LintResult`, `Example`) and the same token
views and styles (`views`, `terminal`). docs/preference.md explains each code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..loader.shards import ShardSet
from ..pipeline.tokenizer import TokenizerInfo
from ..schemas.classes import TokenClass
from ..schemas.preference import SIDES
from .lints import EXAMPLES, WARNING, Example, LintResult, LintSpec
from .report import spread
from .source import _shards_tokenizer
from .terminal import legend, row_text
from .views import RowView, TokenView, token_texts

IMBALANCE = 4.0  # a pair whose longer completion has more than this many times the other's counted tokens

PAIR_LINTS: tuple[LintSpec, ...] = (
    LintSpec(
        "pair-identical-sides",
        WARNING,
        "chosen and rejected count the same tokens",
        "the pair teaches nothing (its DPO loss stays log 2): remove it, or fix the data that made both sides equal",
    ),
    LintSpec(
        "pair-empty-side",
        WARNING,
        "a side counts nothing but its stop",
        "an empty answer compared with a real one mostly teaches the length; check the data's empty completions",
    ),
    LintSpec(
        "pair-length-imbalance",
        WARNING,
        f"one completion counts over {IMBALANCE:g}x the other's tokens",
        "DPO sums log-probs over counted tokens, so such pairs reward length as much as quality; balance or filter",
    ),
)


PAIR_CODES = tuple(spec.code for spec in PAIR_LINTS)


@dataclass
class PairView:
    row: int
    source: str
    prompt: str  # the prompt's text as its tokens decode
    prompt_length: int
    sides: dict[str, RowView]  # each completion's tokens after the prompt, counted or not

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "source": self.source,
            "prompt_length": self.prompt_length,
            **{f"{side}_counted": view.counted for side, view in self.sides.items()},
        }


@dataclass
class PairReport:
    label: str
    rows: int
    counted: dict[str, int]
    lints: list[LintResult]
    shown: list[PairView] = field(default_factory=list)
    records: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.label,
            "layout": "pairs",
            "rows": self.rows,
            "counted": self.counted,
            "records": self.records,
            "lints": [lint.to_dict() for lint in self.lints],
            "fired": [lint.code for lint in self.lints if lint.fired],
            "shown": [view.to_dict() for view in self.shown],
            "notes": self.notes,
        }


def audit_pairs(
    folder: str, tokenizer_path: str | None = None, show: int = 3, rows: list[int] | None = None
) -> PairReport:
    """Every pair of the folder checked, and the pairs asked for (spread over the data, or `rows`) as views."""
    shards = ShardSet(folder, verify=True)
    shards.check()
    data: dict[str, list[Any]] = {name: [] for name in shards.schema.names}
    for _, batch in shards.iter_batches():
        for name, values in batch.to_pydict().items():
            data[name].extend(values)
    n = len(data["source"])
    notes: list[str] = []
    tokenizer = _shards_tokenizer(tokenizer_path, shards.manifest.get("config", {}).get("tokenizer"), notes)
    counted = {side: np.asarray(data[f"{side}_num_loss_tokens"], dtype=np.int64) for side in SIDES}
    results = [LintResult(spec) for spec in PAIR_LINTS]

    def found(result: LintResult, k: int, detail: str) -> None:
        result.rows += 1
        if len(result.examples) < EXAMPLES:
            result.examples.append(Example(row=k, source=data["source"][k], detail=detail))

    for k in range(n):
        p = data["prompt_length"][k]
        chosen, rejected = (_completion(data, side, k, p) for side in SIDES)
        if chosen == rejected:
            found(results[0], k, f"{len(chosen)} counted tokens on each side")
        lengths = [int(counted[side][k]) for side in SIDES]
        empty = [side for side, count in zip(SIDES, lengths, strict=True) if count <= 1]
        if empty:
            found(results[1], k, f"{' and '.join(empty)}: {min(lengths)} counted token")
        if min(lengths) and max(lengths) > IMBALANCE * min(lengths):
            found(results[2], k, f"chosen {lengths[0]}, rejected {lengths[1]} counted tokens")
    wanted = list(rows) if rows else spread(n, show)
    shown = [_view(data, k, tokenizer) for k in wanted if 0 <= k < n]
    return PairReport(
        label=folder,
        rows=n,
        counted={side: int(counted[side].sum()) for side in SIDES},
        lints=results,
        shown=shown,
        records=shards.manifest.get("records"),
        notes=notes,
    )


def _completion(data: dict[str, list[Any]], side: str, k: int, p: int) -> list[int]:
    """A side's counted tokens (target k is token k + 1), in order."""
    mask = data[f"{side}_loss_mask"][k]
    targets = data[f"{side}_target_ids"][k]
    return [t for t, m in zip(targets[p - 1 :], mask[p - 1 :], strict=True) if m]


def _view(data: dict[str, list[Any]], k: int, tokenizer: TokenizerInfo | None) -> PairView:
    p = data["prompt_length"][k]
    sides = {}
    prompt_ids: list[int] = []
    for side in SIDES:
        tokens = [*data[f"{side}_input_ids"][k], data[f"{side}_target_ids"][k][-1]]
        flags = [False, *(bool(m) for m in data[f"{side}_loss_mask"][k])]  # token j counts when target j - 1 does
        prompt_ids = tokens[:p]
        texts = token_texts(tokenizer, tokens)
        views = [TokenView(tokens[j], texts[j], int(TokenClass.ASSISTANT), flags[j]) for j in range(p, len(tokens))]
        count = sum(flags)
        sides[side] = RowView(k, data["source"][k], 0, data["flags"][k], len(tokens) - p, count, views)
    prompt = "".join(token_texts(tokenizer, prompt_ids))
    return PairView(k, data["source"][k], prompt, p, sides)


def print_pairs(report: PairReport, console: Console) -> None:
    """The terminal report: totals, lints, then each pair shown: its prompt, and its sides side by side."""
    console.print(Text(f"pairs:    {report.label} ({report.rows} pairs)"))
    counted = ", ".join(f"{side} {count}" for side, count in report.counted.items())
    console.print(Text(f"counted:  {counted} targets"))
    if report.records:
        r = report.records
        line = (
            f"records:  {r['read']} read = {r['written']} written + {r['rejected']} rejected + {r['dropped']} dropped"
        )
        console.print(Text(line))
    for note in report.notes:
        console.print(Text(f"note:     {note}", style="dim"))
    fired = [lint for lint in report.lints if lint.fired]
    if not fired:
        console.print(Text("lints:    none fired"))
    for lint in fired:
        console.print(Text(f"{lint.spec.severity:<8}  {lint.code}: {lint.count} pair(s): {lint.spec.title}"))
        console.print(Text(f"          fix: {lint.spec.hint}", style="dim"))
        for example in lint.examples:
            console.print(Text(f"          row {example.row} {example.source}: {example.detail}", style="dim"))
    if report.shown:
        console.print(legend(console))
    for view in report.shown:
        console.print(
            Text(f"\npair {view.row}  {view.source}  prompt {view.prompt_length} tokens, never counted", style="bold")
        )
        console.print(Text(view.prompt[-400:], style="dim"))
        table = Table(show_edge=False, expand=True)
        for side, side_view in view.sides.items():
            table.add_column(f"{side}: {side_view.num_tokens} tokens, {side_view.counted} counted", ratio=1)
        table.add_row(*(row_text(side_view, console) for side_view in view.sides.values()))
        console.print(Group(table))
