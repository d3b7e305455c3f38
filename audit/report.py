"""One audit run: statistics, lints and row views for an `AuditSource`, gathered in an `AuditReport`.

The report is plain data; `terminal`, `htmlreport` and `to_dict` (the JSON summary) only present it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..schemas.shards import LAYOUT_ROWS
from .lints import CODES, SEVERITIES, Duplicates, Evidence, LintResult, RowFacts, evaluate
from .source import AuditSource
from .stats import DatasetStats, compute_stats
from .templatecheck import TemplateReport, check_template
from .tokenscan import COLUMNS as SCAN_COLUMNS
from .tokenscan import scan, whitespace_table
from .views import RowView, build_view, fetch_rows

JSON_VERSION = 1


@dataclass
class AuditReport:
    source: AuditSource
    stats: DatasetStats
    lints: list[LintResult]
    template: TemplateReport | None
    shown: list[RowView] = field(default_factory=list)  # the examples asked for (--show K, --row R)
    linked: list[RowView] = field(default_factory=list)  # lint example rows not among `shown` (for the HTML)
    explain: RowView | None = None  # the row of --explain R

    def fired(self) -> list[LintResult]:
        """Fired lints, errors first, each severity in registration order (`lints.LINTS`)."""
        fired = [lint for lint in self.lints if lint.fired]
        return sorted(fired, key=lambda lint: SEVERITIES.index(lint.spec.severity))

    def failing(self, selectors: list[str]) -> list[LintResult]:
        """Fired lints matched by codes, severities ('error', 'warning') or 'all', that judge the output: a lint
        fails on rows or the template, not on the records `prepare` rejected or dropped by its policy (those are
        in `records-not-written`, which fails only when named, or with 'all')."""
        wanted = set(selectors)

        def selected(lint: LintResult) -> bool:
            by_severity = lint.spec.severity in wanted and not lint.spec.gated_by_name
            return "all" in wanted or lint.code in wanted or by_severity

        return [lint for lint in self.fired() if selected(lint) and (lint.in_output or lint.spec.gated_by_name)]

    def views(self) -> list[RowView]:
        return [*self.shown, *self.linked]

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable summary printed by --json (deterministic: no times, no absolute paths added)."""
        return {
            "lossmask_audit": JSON_VERSION,
            "target": self.source.label,
            "mode": self.source.kind,
            "layout": LAYOUT_ROWS,
            "statistics": self.stats.to_dict(),
            "records": self.source.records,
            "config": self.source.config,  # how the rows were made (mask, template, lengths...)
            "template": None if self.template is None else self.template.to_dict(),
            "lints": [lint.to_dict() for lint in self.lints],
            "fired": [lint.code for lint in self.fired()],
            "shown": [
                {"row": v.row, "source": v.source, "part": v.part, "tokens": len(v.tokens), "counted": v.counted}
                for v in self.shown
            ],
            "notes": self.source.notes,
        }


def validate_selectors(selectors: list[str]) -> list[str]:
    """--fail-on values: lint codes, 'error', 'warning' or 'all'. Raises ValueError naming what is unknown."""
    known = {*CODES, *SEVERITIES, "all"}
    unknown = [s for s in selectors if s not in known]
    if unknown:
        raise ValueError(f"unknown lint code(s): {', '.join(unknown)}; known: {', '.join(CODES)}, error, warning, all")
    return selectors


def spread(total: int, k: int) -> list[int]:
    """k row indices evenly spread over 0..total-1, always including the first (deterministic)."""
    k = min(k, total)
    if k <= 0:
        return []
    if k == 1:
        return [0]
    return sorted({round(i * (total - 1) / (k - 1)) for i in range(k)})


def run_audit(
    source: AuditSource,
    show: int = 3,
    rows: list[int] | None = None,
    explain: int | None = None,
    link_examples: bool = False,
) -> AuditReport:
    """Statistics, lints and the requested row views. `link_examples` also builds views of lint example rows."""
    stats = compute_stats(source.frame)
    template = None
    if source.template is not None:
        markers = (source.template_profile or {}).get("end_of_turn_markers", [])
        template = check_template(source.template, source.tokenizer, markers)
    tokenizer = source.tokenizer
    whitespace = whitespace_table(tokenizer.tokenizer) if tokenizer is not None else None
    evidence = Evidence(
        facts=RowFacts.collect(source.frame),
        scan=scan(source.batches(SCAN_COLUMNS), whitespace),
        duplicates=Duplicates.find(source.frame),
        records=source.records,
        rejects=source.rejects,
        template=template,
        bos_id=tokenizer.bos_id if tokenizer is not None else None,
    )
    lints = evaluate(evidence)
    _add_sources(source.frame, lints)

    wanted = list(rows) if rows else spread(stats.rows, show)
    extra = [explain] if explain is not None and explain not in wanted else []
    linked_rows: list[int] = []
    if link_examples:
        for lint in lints:
            for example in lint.examples:
                row = example.row
                if row is not None and row not in wanted and row not in linked_rows and row not in extra:
                    linked_rows.append(row)
    order = [*wanted, *extra, *linked_rows]
    fetched = fetch_rows(source.frame, order, stats.rows)
    views = {row: build_view(row, data, tokenizer) for row, data in zip(order, fetched, strict=True)}
    for lint in lints:
        for example in lint.examples:
            if example.row in views and example.position is not None:
                views[example.row].marks.setdefault(example.position + 1, []).append(lint.code)
    return AuditReport(
        source=source,
        stats=stats,
        lints=lints,
        template=template,
        shown=[views[row] for row in wanted],
        linked=[views[row] for row in linked_rows],
        explain=views[explain] if explain is not None else None,
    )


def _add_sources(frame: pl.LazyFrame, lints: list[LintResult]) -> None:
    """Fill source ('file:line') and part for every example row, in one query."""
    rows = sorted({e.row for lint in lints for e in lint.examples if e.row is not None})
    if not rows:
        return
    found = (
        frame.with_row_index("row")
        .filter(pl.col("row").is_in(np.asarray(rows, dtype=np.uint32)))
        .select("row", "source", "part")
        .collect()
    )
    where = {int(r): (s, int(p)) for r, s, p in found.iter_rows()}
    for lint in lints:
        for example in lint.examples:
            if example.row is not None and example.row in where:
                example.source, example.part = where[example.row]
