"""The audit in the terminal (rich): summary, lints, and rows with every token colored by class and counted flag.

With color, a counted token has its class color as background; an uncounted one is written in its class
color (reasoning in italics, see `palette`). Without color (output piped to a file or another program, or
NO_COLOR), counted spans are wrapped in ⟦ ⟧ so the text still says exactly what trains.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .lints import ERROR, LintResult
from .palette import COUNTED_LEGEND, STYLES, ClassStyle, style
from .report import AuditReport
from .views import RowView, TokenView

OPEN, CLOSE = "⟦", "⟧"
NEWLINE_MARK = "↵"
CONTEXT_CHARS = 24  # tail of the context shown per line of the --explain table
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def plain(console: Console) -> bool:
    return console.color_system is None or console.no_color


def class_style(entry: ClassStyle, counted: bool, marked: bool = False) -> Style:
    """A class's look: counted = its color as background, context = text in its color."""
    if counted:
        return Style(color="black", bgcolor=entry.color, bold=True, italic=entry.italic, underline=marked)
    return Style(color=entry.color, italic=entry.italic, underline=marked)


def token_style(token: TokenView, marked: bool = False) -> Style:
    if token.cls is None:
        return Style(dim=True, underline=marked)
    return class_style(style(token.cls), token.counted, marked)


def row_text(view: RowView, console: Console) -> Text:
    """The row's tokens, colored; or plain with ⟦counted spans⟧ when the console has no color."""
    text = Text()
    if plain(console):
        inside = False
        for token in view.tokens:
            if token.counted and not inside:
                text.append(OPEN)
            elif not token.counted and inside:
                text.append(CLOSE)
            inside = token.counted
            text.append(token.text)
        if inside:
            text.append(CLOSE)
        return text
    for index, token in enumerate(view.tokens):
        shown = token.text.replace("\n", NEWLINE_MARK + "\n") if token.text else "∅"
        text.append(shown, token_style(token, index in view.marks))
    return text


def legend(console: Console) -> Text:
    if plain(console):
        return Text(f"{OPEN}…{CLOSE} = counted targets (the loss is taken on these tokens); the rest is context")
    text = Text("classes: ")
    for entry in STYLES.values():
        text.append(f" {entry.label} ", class_style(entry, counted=False))
    text.append("\ncounted: ")
    for cls in COUNTED_LEGEND:
        text.append(f" {STYLES[cls].label} ", class_style(STYLES[cls], counted=True))
    text.append("  (background = the target counts; plain colored text = context only; ")
    text.append(f"{NEWLINE_MARK} = newline, ∅ = part of the next token's character)")
    return text


def row_header(view: RowView) -> Text:
    header = Text(f"row {view.row}", style="bold")
    header.append(f"  {view.source}" + (f" part {view.part}" if view.part else ""))
    header.append(f"  {len(view.tokens)} tokens, {view.counted} counted", style="dim")
    return header


def lint_table(report: AuditReport) -> Table:
    table = Table(title="lints", title_justify="left", show_edge=False, pad_edge=False, expand=False)
    table.add_column("severity")
    table.add_column("code")
    table.add_column("count", justify="right")
    table.add_column("what")
    for lint in report.lints:
        if not lint.fired:
            continue
        count = str(lint.count) if lint.count else "template"
        table.add_row(
            Text(lint.spec.severity, style=SEVERITY_STYLE[lint.spec.severity]),
            Text(lint.code),
            Text(count),
            Text(lint.spec.title),
        )
    return table


def lint_details(lint: LintResult) -> Group:
    lines = [Text.assemble((lint.code, SEVERITY_STYLE[lint.spec.severity]), f": {lint.spec.title}")]
    if lint.template:
        lines.append(Text(f"  template: {lint.template}"))
    for label, n in lint.breakdown.items():
        lines.append(Text(f"  {n:>8}  {label}"))
    for example in lint.examples:
        where = f"row {example.row}" if example.row is not None else "record"
        lines.append(Text(f"  {where}  {example.source}  {example.detail}", style="dim"))
    lines.append(Text(f"  fix: {lint.spec.hint}", style="italic"))
    return Group(*lines)


def stats_table(report: AuditReport) -> Table:
    """Targets per role, each followed by its classes (indented, in their colors): reasoning, tool calls, tool
    output and the stop sequence are lines of their own."""
    table = Table(title="tokens per role and class", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("role / class")
    table.add_column("targets", justify="right")
    table.add_column("counted", justify="right")
    table.add_column("counted %", justify="right")

    def add(name: Text, positions: int, counted: int) -> None:
        share = 100 * counted / positions if positions else 0.0
        table.add_row(name, *(Text(v) for v in (f"{positions:,}", f"{counted:,}", f"{share:.1f}")))

    for role, classes in report.stats.by_role():
        add(Text(role.role, style="bold"), role.positions, role.counted)
        for entry in classes:
            add(Text(f"  {entry.label}", class_style(style(entry.cls), counted=False)), entry.positions, entry.counted)
    return table


def explain_table(view: RowView, console: Console) -> Table:
    """The lesson's table: at each position the model reads the context and must predict the next token."""
    table = Table(title=f"row {view.row}: context -> next token -> counted?", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("pos", justify="right", no_wrap=True, min_width=3)
    table.add_column("context (model reads)", no_wrap=True, min_width=CONTEXT_CHARS + 1)
    table.add_column("next token", no_wrap=True, max_width=12)
    lesson = view.lesson()
    widest_id = max((len(str(token.id)) for _, _, token in lesson), default=2)  # never cut an id ("12…")
    table.add_column("id", justify="right", no_wrap=True, min_width=max(2, widest_id))
    table.add_column("class", no_wrap=True, min_width=11)
    table.add_column("counted?", no_wrap=True, min_width=8)
    for position, context, token in lesson:
        tail = context[-CONTEXT_CHARS:].replace("\n", NEWLINE_MARK)
        if len(context) > CONTEXT_CHARS:
            tail = "…" + tail
        counted = Text("yes", style="bold green") if token.counted else Text("no", style="dim")
        next_token = Text(repr(token.text)[1:-1], style=token_style(token) if not plain(console) else "")
        # Text, never str: data such as "[/INST]" must not be read as rich markup.
        table.add_row(Text(str(position)), Text(tail), next_token, Text(str(token.id)), Text(token.label), counted)
    return table


def print_explain(report: AuditReport, console: Console, rows: bool) -> None:
    """`--explain R`: the lesson's table of row R (after the rows `--row` asked for), not the whole audit."""
    assert report.explain is not None
    console.print(Text.assemble(("lossmask audit", "bold"), f"  {report.source.label}  ({report.source.kind})"))
    if rows:
        for view in report.shown:
            console.print()
            console.print(row_header(view))
            console.print(row_text(view, console), soft_wrap=True)
    console.print()
    console.print(row_header(report.explain))
    console.print(explain_table(report.explain, console))


def print_report(report: AuditReport, console: Console, elapsed: float | None = None) -> None:
    stats, records = report.stats, report.source.records
    console.print(Text.assemble(("lossmask audit", "bold"), f"  {report.source.label}  ({report.source.kind})"))
    share = 100 * stats.counted_fraction
    console.print(
        f"rows:     {stats.rows:,} rows, {stats.positions:,} positions, {stats.counted:,} counted targets "
        f"({share:.1f}%)"
    )
    if stats.length:
        length = stats.length
        console.print(
            f"length:   min {length['min']}, median {length['p50']}, p90 {length['p90']}, p99 {length['p99']}, "
            f"max {length['max']} positions per row"
        )
    if records:
        console.print(
            f"records:  {records['read']:,} read = {records['written']:,} written + {records['rejected']:,} rejected "
            f"+ {records['dropped']:,} dropped"
        )
        for status in ("rejected", "dropped"):
            for reason, n in records.get("by_reason", {}).get(status, {}).items():
                console.print(f"          {n:>8,} {status}: {reason}")
    if stats.row_flags:
        flags = ", ".join(f"{name}: {n:,} row{'s' if n > 1 else ''}" for name, n in stats.row_flags.items())
        console.print(f"flags:    {flags}")
    if stats.roles:
        console.print()
        console.print(stats_table(report))
    if report.template is not None:
        console.print()
        console.print(Text(f"template {report.template.name}", style="bold"))
        markers = report.template.end_of_turn_markers
        status = ("ok", "green") if markers else ("problem", "bold red")
        found = ", ".join(markers) if markers else "no end-of-turn marker found after an assistant turn"
        console.print(Text.assemble("  ", (f"{status[0]:<8}", status[1]), f"end_of_turn: {found}"))
        for check in report.template.checks:
            mark = {"ok": ("ok", "green"), "problem": ("problem", "bold red"), "note": ("note", "yellow")}[check.status]
            console.print(Text.assemble("  ", (f"{mark[0]:<8}", mark[1]), f"{check.name}: {check.detail}"))

    console.print()
    fired = report.fired()
    silent = [lint.code for lint in report.lints if not lint.fired]
    if fired:
        console.print(lint_table(report))
        for lint in fired:
            console.print(Padding(lint_details(lint), (1, 0, 0, 0)))
    else:
        console.print(Text("lints: none fired", style="bold green"))
    if silent:
        console.print(Text(f"silent: {', '.join(silent)}", style="dim"))

    if report.shown:
        console.print()
        console.print(legend(console))
        for view in report.shown:
            console.print()
            console.print(row_header(view))
            console.print(row_text(view, console), soft_wrap=True)  # never break lines inside the text
    if report.explain is not None:
        console.print()
        console.print(explain_table(report.explain, console))
    for note in report.source.notes:
        console.print(Text(f"note: {note}", style="dim"))
    if elapsed is not None:
        errors = sum(1 for lint in fired if lint.spec.severity == ERROR)
        console.print(
            Text(f"\n{len(fired)} lint(s) fired ({errors} error(s)) in {elapsed:.2f} s", style="bold"),
        )
