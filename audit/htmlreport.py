"""The HTML report: one self-contained file (inline CSS, JS and SVG; a Content-Security-Policy that forbids any
network access), rendered with jinja2 from an `AuditReport`.

The policy allows exactly the report's own `<style>` and `<script>` blocks, by their sha256 (`content_policy`),
and no inline script or style otherwise: text from the data that reached the page as markup could not run.

Token spans are built here rather than in the template: a report can hold tens of thousands of tokens, and
one string join is much faster than a template loop. Each token is
`<span class="t c{class}[ name][ k][ m]" data-i={id} data-c={class} data-p={position}>text</span>`, `name` for
the classes shown apart (`reasoning`, `tool-call`, `tool-output`, `end-of-turn`: `palette.DISTINCT_CLASSES`),
`k` when it counts, `m` when a lint points at it; the row's first token is `t f` (read, never predicted).
"""

from __future__ import annotations

import base64
import hashlib
import json
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .. import __version__
from ..errors import SetupError
from ..schemas.shards import RowFlag
from .charts import BarRow, bars, histogram
from .lints import ERROR
from .palette import COUNTED_LEGEND, STYLES, style, tint
from .report import AuditReport
from .views import RowView

ACCENT = "#4a5fc1"
SPAN_CLASSES = {cls: " ".join(filter(None, ("t", f"c{cls}", entry.css))) for cls, entry in STYLES.items()}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _style_block() -> str:
    """The text of the report's one `<style>` element: the stylesheet, then the colors of each class."""
    rules = []
    for cls in STYLES:
        entry = _legend_entry(int(cls))
        italic = " font-style: italic;" if entry["italic"] else ""
        rules.append(f".c{entry['cls']} {{ --c: {entry['color']}; --t: {entry['tint']};{italic} }}\n")
    return "\n" + _asset("report.css") + "".join(rules)


def _source_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_policy(style_block: str, script_block: str) -> str:
    """No network, and no inline style or script but these two blocks (CSP hashes, not 'unsafe-inline')."""
    return (
        f"default-src 'none'; style-src {_source_hash(style_block)}; script-src {_source_hash(script_block)}; "
        "img-src data:"
    )


def token_html(view: RowView) -> Markup:
    parts = []
    for index, token in enumerate(view.tokens):
        text = token.text
        if not text:
            shown = '<span class="nl">∅</span>'
        else:
            shown = escape(text, quote=False).replace("\n", '<span class="nl">↵</span>\n')
        if token.cls is None:
            parts.append(f'<span class="t f" data-i="{token.id}">{shown}</span>')
            continue
        classes = SPAN_CLASSES.get(token.cls) or f"t c{token.cls}"
        if token.counted:
            classes += " k"
        marks = view.marks.get(index)
        extra = ""
        if marks:
            classes += " m"
            extra = f' data-l="{escape(" ".join(marks))}"'
        data = f'data-i="{token.id}" data-c="{token.cls}" data-p="{index - 1}"{extra}'
        parts.append(f'<span class="{classes}" {data}>{shown}</span>')
    return Markup("".join(parts))


def _view_context(view: RowView) -> dict[str, Any]:
    return {
        "row": view.row,
        "source": view.source,
        "part": view.part,
        "tokens": view.tokens,
        "counted": view.counted,
        "num_loss_tokens": view.num_loss_tokens,
        "flag_names": [flag.name.lower() for flag in RowFlag if view.flags & int(flag)],
        "html": token_html(view),
    }


def _charts(report: AuditReport) -> dict[str, Markup]:
    stats = report.stats
    class_rows = [
        BarRow(c.label, c.positions, c.counted, style(c.cls).color, tint(style(c.cls).color, 0.28))
        for c in stats.classes
    ]
    role_color = {"system": 2, "user": 3, "tool": 4, "assistant": 5, "template": 1, "text": 10}
    role_rows = [
        BarRow(
            r.role,
            r.positions,
            r.counted,
            STYLES[role_color[r.role]].color,
            tint(STYLES[role_color[r.role]].color, 0.28),
        )
        for r in stats.roles
    ]
    reason_rows = []
    records = report.source.records or {}
    for status, color in (("rejected", "#d92d20"), ("dropped", "#f79009")):
        for reason, n in sorted((records.get("by_reason") or {}).get(status, {}).items(), key=lambda kv: -kv[1]):
            reason_rows.append(BarRow(f"{reason}", int(n), int(n), color, tint(color, 0.3)))
    return {
        "length": Markup(
            histogram(stats.length_histogram.counts, stats.length_histogram.edges, ACCENT, "positions per row")
        ),
        "fraction": Markup(
            histogram(
                stats.fraction_histogram.counts,
                stats.fraction_histogram.edges,
                STYLES[5].color,
                "counted targets / positions",
                percent_edges=True,
            )
        ),
        "classes": Markup(bars(class_rows, "targets")),
        "roles": Markup(bars(role_rows, "targets")),
        "reasons": Markup(bars(reason_rows, "records", counted_label="")),
    }


def _legend_entry(cls: int) -> dict[str, Any]:
    entry = STYLES[cls]
    return {
        "cls": cls,
        "label": entry.label,
        "color": entry.color,
        "tint": tint(entry.color, 0.3),
        "meaning": entry.meaning,
        "span": SPAN_CLASSES[cls],
        "italic": entry.italic,
    }


def _class_table(report: AuditReport) -> list[dict[str, Any]]:
    """The lines of the table of targets per role and class: a role, then its classes (`DatasetStats.by_role`)."""
    lines = []
    for role, classes in report.stats.by_role():
        lines.append({"role": True, "label": role.role, "positions": role.positions, "counted": role.counted})
        for entry in classes:
            lines.append(
                {
                    "role": False,
                    "label": entry.label,
                    "span": SPAN_CLASSES.get(entry.cls, f"t c{entry.cls}"),
                    "meaning": style(entry.cls).meaning,
                    "positions": entry.positions,
                    "counted": entry.counted,
                }
            )
    return lines


def render_html(report: AuditReport) -> str:
    style_block, script_block = _style_block(), "\n" + _asset("report.js")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = environment.from_string(_asset("report.html.jinja"))
    fired = [lint.to_dict() for lint in report.fired()]
    for lint, result in zip(fired, report.fired(), strict=True):
        lint["examples"] = result.examples
    labels = json.dumps({str(cls): entry.label for cls, entry in STYLES.items()}).replace("</", "<\\/")
    shown_rows = {view.row for view in report.shown}
    groups = [
        {"title": "", "views": [_view_context(v) for v in report.shown]},
        {
            "title": "Rows linked from the lints",
            "views": [_view_context(v) for v in report.linked if v.row not in shown_rows],
        },
    ]
    template_info = None
    if report.template is not None:
        template_info = {
            "name": report.template.name,
            "end_of_turn_markers": report.template.end_of_turn_markers,
            "checks": report.template.checks,
        }
    return template.render(
        target=report.source.label,
        mode=report.source.kind,
        stats=report.stats,
        records=report.source.records,
        fired=fired,
        errors=sum(1 for lint in report.fired() if lint.spec.severity == ERROR),
        silent=[lint.code for lint in report.lints if not lint.fired],
        charts=_charts(report),
        flags=sorted(report.stats.row_flags.items()),
        template=template_info,
        legend=[_legend_entry(int(cls)) for cls in STYLES],
        counted_legend=[_legend_entry(int(cls)) for cls in COUNTED_LEGEND],
        class_table=_class_table(report),
        groups=groups,
        notes=report.source.notes,
        version=__version__,
        class_labels=Markup(labels),
        csp=Markup(content_policy(style_block, script_block)),  # quotes and base64 only: nothing to escape
        style=Markup(style_block),
        script=Markup(script_block),
    )


def write_html(report: AuditReport, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise SetupError(f"cannot write the HTML report to {path}: {exc}") from None
