"""The lints: one stable code each, a severity, a count, and example rows or records.

A lint fires when it has rows (in the shards), records (not written, from the manifest and `_rejects.jsonl`)
or template evidence (a probe of the chat template itself). Most facts were decided during `prepare` and are
read back from row flags and rejects; the rest come from the tokens (`tokenscan`, duplicates, BOS ids) and
the template probes (`templatecheck`). docs/audit.md explains each code: meaning, why it matters, the fix.

Each lint is one function over the `Evidence`, registered with its spec (code, severity, title, hint) by the
`@lint` decorator right above it; a lint that is only what `prepare` flagged (and rejected) is one `flag_lint`
call. `evaluate` runs them in registration order, the order of every report. A new lint also needs its section
in docs/audit.md and a crafted case in tests/audit/test_audit_lints.py (both tested).
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
    # Fails `--fail-on` only when named (or `all`), never by its severity: records prepare kept out of the shards
    # by its own policy are no fault of the shards.
    gated_by_name: bool = False


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

    @property
    def in_output(self) -> bool:
        """Fired on what was written (rows) or on the template, not only on records `prepare` rejected or
        dropped: what `--fail-on` judges (those records have their own lint, `records-not-written`)."""
        return self.rows > 0 or self.template is not None

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


class LintBuilder:
    """Fills one LintResult from row masks, reasons and template evidence: what every lint function writes to."""

    def __init__(self, spec: LintSpec, evidence: Evidence):
        self.result = LintResult(spec)
        self.evidence = evidence

    def rows(
        self,
        hits: np.ndarray,
        detail: Callable[[int], str],
        position: Callable[[int], int | None] = lambda row: None,
    ) -> None:
        """Count the rows where `hits` is true and keep the first EXAMPLES of them as examples."""
        indices = np.flatnonzero(hits)
        self.result.rows = int(indices.size)
        for row in indices[:EXAMPLES].tolist():
            self.result.examples.append(Example(row=int(row), detail=detail(row), position=position(row)))

    def records(self, *reasons: tuple[str, str]) -> None:
        """Count the records not written for these (status, reason) pairs; their rejects become examples."""
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

    def flagged_or_found(self, flag: RowFlag, found: np.ndarray, at: Callable[[int], str], otherwise: str) -> None:
        """The rows `prepare` flagged, or in which a token scan found a position (`found[row] >= 0`): an example
        the scan found points at its position, `at(position)` says what is there; a flagged one says `otherwise`."""
        self.rows(
            self.evidence.facts.flagged(flag) | (found >= 0),
            lambda row: at(int(found[row])) if found[row] >= 0 else otherwise,
            lambda row: int(found[row]) if found[row] >= 0 else None,
        )

    def breakdown(self, label: str, n: int) -> None:
        if n:
            self.result.breakdown[label] = int(n)

    def template(self, detail: str) -> None:
        """The template itself shows the problem, whatever the rows: the lint fires on this alone."""
        self.result.template = detail


LintCheck = Callable[[Evidence, LintBuilder], None]


@dataclass(frozen=True)
class Lint:
    spec: LintSpec
    check: LintCheck

    def run(self, evidence: Evidence) -> LintResult:
        builder = LintBuilder(self.spec, evidence)
        self.check(evidence, builder)
        return builder.result


_REGISTERED: list[Lint] = []


def lint(
    code: str, severity: str, title: str, hint: str, gated_by_name: bool = False
) -> Callable[[LintCheck], LintCheck]:
    """Register the decorated function as the lint `code`, with its spec beside it.

    Registration order is the order of the lints everywhere (the JSON's `lints`, the reports, `--fail-on`'s list
    of codes), so a new lint goes where it belongs among the others, not necessarily last.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"lint {code}: severity must be one of {SEVERITIES}, not {severity!r}")
    if any(registered.spec.code == code for registered in _REGISTERED):
        raise ValueError(f"lint {code} is registered twice")
    spec = LintSpec(code, severity, title, hint, gated_by_name)

    def register(check: LintCheck) -> LintCheck:
        _REGISTERED.append(Lint(spec, check))
        return check

    return register


def flag_lint(
    code: str,
    severity: str,
    title: str,
    hint: str,
    flag: RowFlag,
    detail: str,
    kept: str | None = None,
    rejected: tuple[str, ...] = (),
) -> None:
    """Register a lint decided during `prepare`: the rows it flagged with `flag`, each example saying `detail`
    (and, given `kept`, the breakdown's label for them), plus the records it rejected for the `rejected` reasons
    (the other choice of the same option)."""

    def check(evidence: Evidence, out: LintBuilder) -> None:
        out.rows(evidence.facts.flagged(flag), lambda row: detail)
        if kept is not None:
            out.breakdown(kept, out.result.rows)
        out.records(*(("rejected", reason) for reason in rejected))

    lint(code, severity, title, hint)(check)


def _flag_detail(facts: RowFacts, *wanted: RowFlag) -> Callable[[int], str]:
    return lambda row: _flag_names(int(facts.flags[row]), wanted)


@lint(
    "no-counted-targets",
    ERROR,
    "examples with no counted target",
    "check --mask, --train-roles and per-message weights: these examples teach nothing",
)
def no_counted_targets(evidence: Evidence, out: LintBuilder) -> None:
    out.rows(evidence.facts.counted == 0, lambda row: "written with 0 counted targets")
    out.breakdown("row(s) written with none", out.result.rows)
    out.records(("dropped", "no_trainable_tokens"))
    # Rows cut away from records that were written (a split turn left with no counted target), from the manifest.
    rows_dropped = int(((evidence.records or {}).get("rows_dropped") or {}).get("no_trainable_tokens", 0))
    if rows_dropped:
        out.result.records += rows_dropped
        out.breakdown("row(s) of written records dropped: no_trainable_tokens", rows_dropped)


@lint(
    "double-bos",
    ERROR,
    "rows that start with two BOS tokens",
    "encode rendered chat with add_special_tokens=False; do not put BOS strings in text data",
)
def double_bos(evidence: Evidence, out: LintBuilder) -> None:
    facts = evidence.facts
    by_ids = np.zeros_like(facts.counted, dtype=bool)
    if evidence.bos_id is not None:
        by_ids = (facts.first_id == evidence.bos_id) & (facts.second_id == evidence.bos_id)
    out.rows(
        facts.flagged(RowFlag.DOUBLE_BOS) | by_ids,
        lambda row: f"starts with token {int(facts.first_id[row])} twice",
        lambda row: 0,
    )


@lint(
    "eot-missing",
    ERROR,
    "answers with no end-of-turn marker after them",
    "the model never learns to stop: use the model's own template and tokenizer together",
)
def eot_missing(evidence: Evidence, out: LintBuilder) -> None:
    if evidence.template is not None and not evidence.template.end_of_turn_markers:
        out.template("the template writes no end-of-turn control token after an assistant turn")
    out.flagged_or_found(
        RowFlag.NO_END_OF_TURN,
        evidence.scan.first["eot_missing"],
        lambda at: f"no end-of-turn after the answer ending at position {at}",
        "no_end_of_turn (found while rendering)",
    )


@lint(
    "eot-not-counted",
    ERROR,
    "end-of-turn markers not counted after a counted answer",
    "drop --no-train-eot (or fix the {% generation %} block): the model must learn to stop",
)
def eot_not_counted(evidence: Evidence, out: LintBuilder) -> None:
    first = evidence.scan.first["eot_not_counted"]
    out.rows(
        first >= 0,
        lambda row: f"end-of-turn at position {int(first[row])} not counted",
        lambda row: int(first[row]),
    )


@lint(
    "reasoning-never-trained",
    WARNING,
    "reasoning read in the context but never trained anywhere in the dataset",
    "drop --no-train-reasoning or train the turns that hold reasoning (or remove the reasoning from the data if "
    "the model should not reason)",
)
def reasoning_never_trained(evidence: Evidence, out: LintBuilder) -> None:
    """Dataset-wide, not per row: a row that reads reasoning without training it is normal (reasoning the template
    keeps in the history), as long as some row teaches the model to write reasoning at all."""
    tally = evidence.scan.reasoning
    if tally.counted.sum():
        return
    out.rows(
        tally.context > 0,
        lambda row: (
            f"{int(tally.context[row])} reasoning token(s) in the context from position "
            f"{int(tally.first_context[row])}, none counted"
        ),
        lambda row: int(tally.first_context[row]),
    )
    out.breakdown("reasoning token(s) in the context, none counted", int(tally.context.sum()))


@lint(
    "empty-assistant",
    WARNING,
    "assistant messages with blank content",
    "remove or fix these messages: a counted end-of-turn alone teaches the model to say nothing",
)
def empty_assistant(evidence: Evidence, out: LintBuilder) -> None:
    out.flagged_or_found(
        RowFlag.EMPTY_ASSISTANT,
        evidence.scan.first["empty_assistant"],
        lambda at: f"counted end-of-turn at position {at} after no content",
        "an assistant message has blank content (left untrained)",
    )


flag_lint(
    "straddling-token",
    WARNING,
    "tokens that hold both untrained and trained text",
    "end prompts at a word boundary (prompt/completion data split mid-word)",
    RowFlag.STRADDLE,
    "a counted token also holds untrained text",
)


flag_lint(
    "special-token-in-content",
    WARNING,
    "control-token strings inside message text (escaped as plain text, or rejected)",
    "usually scraped chat markup: clean the data, or keep the default escape policy",
    RowFlag.SPECIAL_ESCAPED,
    "escaped: encoded as plain text",
    kept="row(s) escaped as plain text",
    rejected=("special_token_in_content", "special_token_in_tool_data"),
)


flag_lint(
    "special-token-as-control",
    ERROR,
    "control-token strings in message text encoded as control tokens",
    "forged turns: use --special-tokens-in-content escape (the default) or reject",
    RowFlag.SPECIAL_ALLOWED,
    "allowed: became control tokens (forged markup)",
)


flag_lint(
    "answer-truncated",
    WARNING,
    "answers cut by --max-length",
    "raise --max-length, or use --overflow drop: a cut answer is learned without its ending",
    RowFlag.ANSWER_TRUNCATED,
    "cut inside a counted span",
)


flag_lint(
    "turns-dropped",
    WARNING,
    "conversations shortened to fit --max-length by dropping their earliest turns",
    "raise --max-length, or --overflow split to keep every turn: later answers lost the context they had",
    RowFlag.TURNS_DROPPED,
    "earliest turns dropped to fit",
)


@lint(
    "template-not-prefix-stable",
    WARNING,
    "the template renders a turn differently once more turns follow",
    "keep --unfaithful-turns split (the default) so each turn trains in its inference context",
)
def template_not_prefix_stable(evidence: Evidence, out: LintBuilder) -> None:
    check = evidence.template.check("prefix_stable") if evidence.template else None
    if check is not None and check.status == "problem":
        out.template(check.detail)  # on the template alone, even if every conversation has a single turn
    facts = evidence.facts
    wanted = (RowFlag.SPLIT_TURN, RowFlag.UNFAITHFUL_MASKED, RowFlag.UNFAITHFUL_TRAINED)
    out.rows(facts.flagged(*wanted), _flag_detail(facts, *wanted))
    for flag, label in (
        (RowFlag.SPLIT_TURN, "row(s) split, one per turn context (--unfaithful-turns split)"),
        (RowFlag.UNFAITHFUL_MASKED, "row(s) with such turns left untrained (faithful-only)"),
        (RowFlag.UNFAITHFUL_TRAINED, "row(s) with such turns trained as rendered (as-rendered)"),
    ):
        out.breakdown(label, int(facts.flagged(flag).sum()))
    out.records(("rejected", "template_unfaithful"))


@lint(
    "context-mismatch",
    ERROR,
    "turns trained on a rendering the model does not see at inference",
    "fix the template, or use --unfaithful-turns split instead of as-rendered",
)
def context_mismatch(evidence: Evidence, out: LintBuilder) -> None:
    wanted = (RowFlag.GEN_PROMPT_MISMATCH, RowFlag.UNFAITHFUL_TRAINED)
    out.rows(evidence.facts.flagged(*wanted), _flag_detail(evidence.facts, *wanted))


flag_lint(
    "message-dropped",
    ERROR,
    "messages the chat template left out of the rendering",
    "use a template that keeps them (e.g. fold the system prompt into the first user turn)",
    RowFlag.MESSAGE_DROPPED,
    "kept with --dropped-messages keep",
    kept="row(s) kept without the message",
    rejected=("template_dropped_message",),
)


@lint(
    "duplicate-examples",
    WARNING,
    "rows identical to an earlier row (same tokens and mask)",
    "deduplicate the inputs: repeated examples are over-weighted and memorized",
)
def duplicate_examples(evidence: Evidence, out: LintBuilder) -> None:
    rows, first = evidence.duplicates.rows, evidence.duplicates.first
    earliest = dict(zip(rows[:EXAMPLES].tolist(), first[:EXAMPLES].tolist(), strict=True))
    repeats = np.zeros_like(evidence.facts.counted, dtype=bool)
    repeats[rows] = True
    out.rows(repeats, lambda row: f"same tokens and mask as row {earliest[row]}")
    out.breakdown("distinct row(s) repeated", int(np.unique(first).size))


@lint(
    "records-not-written",
    WARNING,
    "records prepare rejected or dropped, so not in the shards",
    "read _rejects.jsonl: each line gives the record's file:line, its reason and what to fix",
    gated_by_name=True,
)
def records_not_written(evidence: Evidence, out: LintBuilder) -> None:
    """Every record not written, by reason. The lints above count the records of their own reasons too; this one
    gates them: `--fail-on error` judges the shards, `--fail-on records-not-written` the records kept out."""
    by_reason = (evidence.records or {}).get("by_reason") or {}
    out.records(
        *((status, reason) for status in ("rejected", "dropped") for reason in sorted(by_reason.get(status, {})))
    )


LINTS: tuple[Lint, ...] = tuple(_REGISTERED)  # every lint, in the order they are reported
SPECS: tuple[LintSpec, ...] = tuple(registered.spec for registered in LINTS)
SPEC = {spec.code: spec for spec in SPECS}
CODES = tuple(SPEC)


def evaluate(evidence: Evidence) -> list[LintResult]:
    """One result per lint, fired or silent, in registration order."""
    return [registered.run(evidence) for registered in LINTS]
