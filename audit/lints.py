"""The lints: one stable code each, a severity, a count, and example rows or records.

A lint fires when it has rows (in the shards), records (not written, from the manifest and `_rejects.jsonl`)
or template evidence (a probe of the chat template itself). Most facts were decided during `prepare` and are
read back from row flags and rejects; the rest come from the tokens (`tokenscan`, duplicates, BOS ids) and
the template probes (`templatecheck`). docs/audit.md explains each code: meaning, why it matters, the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..schemas.shards import RowFlag
from .templatecheck import TemplateReport
from .tokenscan import ScanResult

ERROR, WARNING = "error", "warning"
SEVERITIES = (ERROR, WARNING)
EXAMPLES = 5  # example rows (and, separately, example records) kept per lint


@dataclass(frozen=True)
class LintSpec:
    code: str
    severity: str
    title: str
    hint: str  # what to do about it, in one line


SPECS: tuple[LintSpec, ...] = (
    LintSpec(
        "no-counted-targets",
        ERROR,
        "examples with no counted target",
        "check --mask, --train-roles and per-message weights: these examples teach nothing",
    ),
    LintSpec(
        "double-bos",
        ERROR,
        "rows that start with two BOS tokens",
        "encode rendered chat with add_special_tokens=False; do not put BOS strings in text data",
    ),
    LintSpec(
        "eot-missing",
        ERROR,
        "answers with no end-of-turn marker after them",
        "the model never learns to stop: use the model's own template and tokenizer together",
    ),
    LintSpec(
        "eot-not-counted",
        ERROR,
        "end-of-turn markers not counted after a counted answer",
        "drop --no-train-eot (or fix the {% generation %} block): the model must learn to stop",
    ),
    LintSpec(
        "empty-assistant",
        WARNING,
        "assistant messages with blank content",
        "remove or fix these messages: a counted end-of-turn alone teaches the model to say nothing",
    ),
    LintSpec(
        "straddling-token",
        WARNING,
        "tokens that hold both untrained and trained text",
        "end prompts at a word boundary (prompt/completion data split mid-word)",
    ),
    LintSpec(
        "special-token-in-content",
        WARNING,
        "control-token strings inside message text (escaped as plain text, or rejected)",
        "usually scraped chat markup: clean the data, or keep the default escape policy",
    ),
    LintSpec(
        "special-token-as-control",
        ERROR,
        "control-token strings in message text encoded as control tokens",
        "forged turns: use --special-tokens-in-content escape (the default) or reject",
    ),
    LintSpec(
        "answer-truncated",
        WARNING,
        "answers cut by --max-length",
        "raise --max-length, or use --overflow drop: a cut answer is learned without its ending",
    ),
    LintSpec(
        "turns-dropped",
        WARNING,
        "conversations shortened to fit --max-length by dropping their earliest turns",
        "raise --max-length, or --overflow split to keep every turn: later answers lost the context they had",
    ),
    LintSpec(
        "template-not-prefix-stable",
        WARNING,
        "the template renders a turn differently once more turns follow",
        "keep --unfaithful-turns split (the default) so each turn trains in its inference context",
    ),
    LintSpec(
        "context-mismatch",
        ERROR,
        "turns trained on a rendering the model does not see at inference",
        "fix the template, or use --unfaithful-turns split instead of as-rendered",
    ),
    LintSpec(
        "message-dropped",
        ERROR,
        "messages the chat template left out of the rendering",
        "use a template that keeps them (e.g. fold the system prompt into the first user turn)",
    ),
    LintSpec(
        "duplicate-examples",
        WARNING,
        "rows identical to an earlier row (same tokens and mask)",
        "deduplicate the inputs: repeated examples are over-weighted and memorized",
    ),
)
SPEC = {spec.code: spec for spec in SPECS}
CODES = tuple(SPEC)


@dataclass
class Example:
    row: int | None  # row index in the audited rows; None for a record that was not written
    source: str = ""
    part: int = 0
    detail: str = ""
    position: int | None = None  # target position in the row the finding points at, when there is one

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class LintResult:
    spec: LintSpec
    rows: int = 0
    records: int = 0
    template: str | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)

    @property
    def code(self) -> str:
        return self.spec.code

    @property
    def count(self) -> int:
        return self.rows + self.records

    @property
    def fired(self) -> bool:
        return self.count > 0 or self.template is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.spec.severity,
            "title": self.spec.title,
            "hint": self.spec.hint,
            "fired": self.fired,
            "count": self.count,
            "rows": self.rows,
            "records": self.records,
            "template": self.template,
            "breakdown": self.breakdown,
            "examples": [e.to_dict() for e in self.examples],
        }


@dataclass
class RowFacts:
    """Per-row numbers the lints need, one numpy array each, in row order."""

    flags: np.ndarray
    counted: np.ndarray
    first_id: np.ndarray  # input_ids[0]
    second_id: np.ndarray  # target_ids[0], the row's second token

    @classmethod
    def collect(cls, frame: pl.LazyFrame) -> RowFacts:
        data = frame.select(
            pl.col("flags").cast(pl.Int64),
            pl.col("num_loss_tokens").cast(pl.Int64),
            pl.col("input_ids").list.first().fill_null(-1).cast(pl.Int64).alias("first"),
            pl.col("target_ids").list.first().fill_null(-1).cast(pl.Int64).alias("second"),
        ).collect()
        return cls(
            flags=data["flags"].to_numpy(),
            counted=data["num_loss_tokens"].to_numpy(),
            first_id=data["first"].to_numpy(),
            second_id=data["second"].to_numpy(),
        )

    def flagged(self, *flags: RowFlag) -> np.ndarray:
        bits = 0
        for flag in flags:
            bits |= int(flag)
        return (self.flags & bits) != 0


@dataclass
class Duplicates:
    rows: np.ndarray  # rows that repeat an earlier row, ascending
    first: np.ndarray  # for each, the earliest row it repeats

    @classmethod
    def find(cls, frame: pl.LazyFrame) -> Duplicates:
        """Rows keyed by their whole token sequence and mask (input_ids, last target, loss_mask).

        The key is two 64-bit hashes with different seeds, computed in polars' streaming engine so that only
        16 bytes per row are held, not the tokens: two different rows share it with probability about
        n^2 / 2^129 (1e-26 for a million rows).
        """
        key = [pl.col("input_ids"), pl.col("target_ids").list.last(), pl.col("loss_mask")]
        hashes = (
            frame.select(pl.struct(key).hash(seed=1).alias("h1"), pl.struct(key).hash(seed=2).alias("h2"))
            .with_row_index("row")
            .collect(engine="streaming")
        )
        found = (
            hashes.lazy()
            .with_columns(pl.col("row").min().over("h1", "h2").alias("first"))
            .filter(pl.col("row") != pl.col("first"))
            .select("row", "first")
            .sort("row")
            .collect()
        )
        return cls(found["row"].to_numpy().astype(np.int64), found["first"].to_numpy().astype(np.int64))


@dataclass
class Evidence:
    """Everything the lints are decided from."""

    facts: RowFacts
    scan: ScanResult
    duplicates: Duplicates
    records: dict[str, Any] | None
    rejects: list[dict[str, Any]]
    template: TemplateReport | None
    bos_id: int | None


def _reason_count(records: dict[str, Any] | None, status: str, reason: str) -> int:
    if not records:
        return 0
    return int(records.get("by_reason", {}).get(status, {}).get(reason, 0))


FLAG_PHRASES = {
    RowFlag.GEN_PROMPT_MISMATCH: "the context of a trained turn differs from the inference prompt",
    RowFlag.UNFAITHFUL_TRAINED: "a turn trained as rendered, unlike inference",
    RowFlag.UNFAITHFUL_MASKED: "a turn rendered unlike inference left untrained",
    RowFlag.SPLIT_TURN: "one row per turn context",
}


def _flag_names(flags: int, wanted: tuple[RowFlag, ...]) -> str:
    return "; ".join(f"{FLAG_PHRASES[f]} ({f.name.lower()})" for f in wanted if flags & int(f))


class _Builder:
    """Fills one LintResult from row masks, reasons and template evidence."""

    def __init__(self, code: str, evidence: Evidence):
        self.result = LintResult(SPEC[code])
        self.evidence = evidence

    def rows(
        self,
        hits: np.ndarray,
        detail: Callable[[int], str],
        position: Callable[[int], int | None] = lambda row: None,
    ) -> LintResult:
        indices = np.flatnonzero(hits)
        self.result.rows = int(indices.size)
        for row in indices[:EXAMPLES].tolist():
            self.result.examples.append(Example(row=int(row), detail=detail(row), position=position(row)))
        return self.result

    def records(self, *reasons: tuple[str, str]) -> LintResult:
        for status, reason in reasons:
            n = _reason_count(self.evidence.records, status, reason)
            if n:
                self.result.records += n
                self.result.breakdown[f"{status}: {reason}"] = n
        wanted = set(reasons)
        kept = 0
        for reject in self.evidence.rejects:
            if (reject.get("status"), reject.get("reason")) in wanted and kept < EXAMPLES:
                detail = f"{reject.get('status')} ({reject.get('reason')}): {reject.get('detail') or ''}".rstrip(": ")
                self.result.examples.append(Example(row=None, source=str(reject.get("source")), detail=detail))
                kept += 1
        return self.result

    def breakdown(self, label: str, n: int) -> None:
        if n:
            self.result.breakdown[label] = int(n)


def evaluate(evidence: Evidence) -> list[LintResult]:
    facts, scan = evidence.facts, evidence.scan
    results = []

    def flag_detail(*wanted: RowFlag) -> Callable[[int], str]:
        return lambda row: _flag_names(int(facts.flags[row]), wanted)

    # no-counted-targets
    b = _Builder("no-counted-targets", evidence)
    b.rows(facts.counted == 0, lambda row: "written with 0 counted targets")
    b.breakdown("row(s) written with none", b.result.rows)
    b.records(("dropped", "no_trainable_tokens"))
    rows_dropped = int(((evidence.records or {}).get("rows_dropped") or {}).get("no_trainable_tokens", 0))
    if rows_dropped:
        b.result.records += rows_dropped
        b.breakdown("row(s) of written records dropped: no_trainable_tokens", rows_dropped)
    results.append(b.result)

    # double-bos
    b = _Builder("double-bos", evidence)
    by_ids = np.zeros_like(facts.counted, dtype=bool)
    if evidence.bos_id is not None:
        by_ids = (facts.first_id == evidence.bos_id) & (facts.second_id == evidence.bos_id)
    results.append(
        b.rows(
            facts.flagged(RowFlag.DOUBLE_BOS) | by_ids,
            lambda row: f"starts with token {int(facts.first_id[row])} twice",
            lambda row: 0,
        )
    )

    # eot-missing
    b = _Builder("eot-missing", evidence)
    flagged = facts.flagged(RowFlag.NO_END_OF_TURN)
    missing = scan.first["eot_missing"]
    results.append(
        b.rows(
            flagged | (missing >= 0),
            lambda row: (
                "no end-of-turn after the answer ending at position " + str(int(missing[row]))
                if missing[row] >= 0
                else "no_end_of_turn (found while rendering)"
            ),
            lambda row: int(missing[row]) if missing[row] >= 0 else None,
        )
    )
    if evidence.template is not None and not evidence.template.end_of_turn_markers:
        b.result.template = "the template writes no end-of-turn control token after an assistant turn"

    # eot-not-counted
    b = _Builder("eot-not-counted", evidence)
    first = scan.first["eot_not_counted"]
    results.append(
        b.rows(
            first >= 0,
            lambda row: f"end-of-turn at position {int(first[row])} not counted",
            lambda row: int(first[row]),
        )
    )

    # empty-assistant
    b = _Builder("empty-assistant", evidence)
    empty = scan.first["empty_assistant"]
    results.append(
        b.rows(
            facts.flagged(RowFlag.EMPTY_ASSISTANT) | (empty >= 0),
            lambda row: (
                f"counted end-of-turn at position {int(empty[row])} after no content"
                if empty[row] >= 0
                else "an assistant message has blank content (left untrained)"
            ),
            lambda row: int(empty[row]) if empty[row] >= 0 else None,
        )
    )

    # straddling-token
    b = _Builder("straddling-token", evidence)
    results.append(b.rows(facts.flagged(RowFlag.STRADDLE), lambda row: "a counted token also holds untrained text"))

    # special-token-in-content
    b = _Builder("special-token-in-content", evidence)
    b.rows(facts.flagged(RowFlag.SPECIAL_ESCAPED), lambda row: "escaped: encoded as plain text")
    b.breakdown("row(s) escaped as plain text", b.result.rows)
    results.append(b.records(("rejected", "special_token_in_content"), ("rejected", "special_token_in_tool_data")))

    # special-token-as-control
    b = _Builder("special-token-as-control", evidence)
    results.append(
        b.rows(facts.flagged(RowFlag.SPECIAL_ALLOWED), lambda row: "allowed: became control tokens (forged markup)")
    )

    # answer-truncated
    b = _Builder("answer-truncated", evidence)
    results.append(b.rows(facts.flagged(RowFlag.ANSWER_TRUNCATED), lambda row: "cut inside a counted span"))

    # turns-dropped
    b = _Builder("turns-dropped", evidence)
    results.append(b.rows(facts.flagged(RowFlag.TURNS_DROPPED), lambda row: "earliest turns dropped to fit"))

    # template-not-prefix-stable
    b = _Builder("template-not-prefix-stable", evidence)
    wanted = (RowFlag.SPLIT_TURN, RowFlag.UNFAITHFUL_MASKED, RowFlag.UNFAITHFUL_TRAINED)
    b.rows(facts.flagged(*wanted), flag_detail(*wanted))
    for flag, label in (
        (RowFlag.SPLIT_TURN, "row(s) split, one per turn context (--unfaithful-turns split)"),
        (RowFlag.UNFAITHFUL_MASKED, "row(s) with such turns left untrained (faithful-only)"),
        (RowFlag.UNFAITHFUL_TRAINED, "row(s) with such turns trained as rendered (as-rendered)"),
    ):
        b.breakdown(label, int(facts.flagged(flag).sum()))
    b.records(("rejected", "template_unfaithful"))
    check = evidence.template.check("prefix_stable") if evidence.template else None
    if check is not None and check.status == "problem":
        b.result.template = check.detail
    results.append(b.result)

    # context-mismatch
    b = _Builder("context-mismatch", evidence)
    wanted = (RowFlag.GEN_PROMPT_MISMATCH, RowFlag.UNFAITHFUL_TRAINED)
    results.append(b.rows(facts.flagged(*wanted), flag_detail(*wanted)))

    # message-dropped
    b = _Builder("message-dropped", evidence)
    b.rows(facts.flagged(RowFlag.MESSAGE_DROPPED), lambda row: "kept with --dropped-messages keep")
    b.breakdown("row(s) kept without the message", b.result.rows)
    results.append(b.records(("rejected", "template_dropped_message")))

    # duplicate-examples
    b = _Builder("duplicate-examples", evidence)
    dup = evidence.duplicates
    repeats = np.zeros_like(facts.counted, dtype=bool)
    repeats[dup.rows] = True
    earliest = dict(zip(dup.rows[:EXAMPLES].tolist(), dup.first[:EXAMPLES].tolist(), strict=True))
    b.rows(repeats, lambda row: f"same tokens and mask as row {earliest[row]}")
    b.breakdown("distinct row(s) repeated", int(np.unique(dup.first).size))
    results.append(b.result)
    return results
