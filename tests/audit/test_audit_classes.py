"""The audit learns the classes: reasoning, tool calls, tool output and the stop sequence are counted apart in
--json, listed on their own lines in the terminal and the HTML report, and look different from the answer."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from audit_testkit import TOKENIZER, audit_sample, function_tool, handmade_row, prepare_shards, write_jsonl
from click.testing import CliRunner
from lossmask.audit import AuditReport, open_shards, run_audit
from lossmask.audit.htmlreport import render_html
from lossmask.audit.palette import DISTINCT_CLASSES, STYLES
from lossmask.audit.terminal import legend, print_report, row_text
from lossmask.cli import main
from lossmask.pipeline.write import write_shard
from lossmask.schemas.classes import GENERATED_CLASSES
from lossmask.schemas.classes import TokenClass as C
from rich.console import Console
from tokenizers import Tokenizer

REASONING = "Two plus three makes five."
CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
TOOL_OUTPUT = '{"sum": 5}'
ADD = function_tool("add", "Add two numbers.", a="integer", b="integer")
RECORDS = [
    {
        "messages": [
            {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "It is 5.", "reasoning_content": REASONING},
        ]
    },
    {
        "tools": [ADD],
        "messages": [
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": TOOL_OUTPUT},
            {"role": "assistant", "content": "The sum is 5."},
        ],
    },
    {
        "messages": [
            {"role": "user", "content": "What's the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    },
]
DISTINCT_LABELS = {"reasoning", "tool_call", "tool_output", "end_of_turn"}


def encoded_length(text: str) -> int:
    tokenizer = Tokenizer.from_file(str(Path(TOKENIZER) / "tokenizer.json"))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def audit_json(folder: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["audit", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def json_classes(folder: Path) -> dict[str, tuple[int, int]]:
    """`lossmask audit FOLDER --json`: (targets, counted) per class label."""
    return {c["label"]: (c["positions"], c["counted"]) for c in audit_json(folder)["statistics"]["classes"]}


def json_lint(folder: Path, code: str) -> dict[str, Any]:
    summary = audit_json(folder)
    (entry,) = [lint for lint in summary["lints"] if lint["code"] == code]
    assert entry["fired"] == (code in summary["fired"])
    return entry


def shard_classes(folder: Path) -> dict[str, tuple[int, int]]:
    """The same, counted independently from the shards' columns (pyarrow and a Counter, no polars)."""
    table = ds.dataset(str(folder), format="arrow").to_table(columns=["token_class", "loss_mask"])
    targets: Counter[int] = Counter()
    counted: Counter[int] = Counter()
    for classes, mask in zip(table["token_class"].to_pylist(), table["loss_mask"].to_pylist(), strict=True):
        targets.update(classes)
        counted.update(c for c, m in zip(classes, mask, strict=True) if m)
    return {STYLES[c].label: (n, counted[c]) for c, n in targets.items()}


# Hand-made rows: every count known by construction. Per target: H header, U user, R reasoning, A answer,
# K tool call, T tool output, E end-of-turn (the first token of a row is read only: class 0, never counted).
H, U, R, A, K, T, E = C.ROLE_HEADER, C.USER, C.REASONING, C.ASSISTANT, C.TOOL_CALL, C.TOOL, C.END_OF_TURN
HANDMADE = [
    ([0, H, U, U, H, R, R, R, A, A, E], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]),  # trained reasoning, answer, stop
    ([0, H, U, H, K, K, K, E, H, T, T, H, A, E], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]),  # a tool call
    ([0, H, U, H, R, R, A, E], [0, 0, 0, 0, 0, 0, 1, 1]),  # reasoning read as context only
]
HANDMADE_CLASSES = {
    "header": (8, 0),
    "user": (4, 0),
    "reasoning": (5, 3),
    "assistant": (4, 4),
    "tool_call": (3, 3),
    "tool_output": (2, 0),
    "end_of_turn": (4, 4),
}


def handmade_shards(folder: Path, rows: list[tuple[list[int], list[int]]] = HANDMADE) -> Path:
    folder.mkdir()
    made = [
        handmade_row(list(range(1, len(classes) + 1)), [int(c) for c in classes], counted, index=i)
        for i, (classes, counted) in enumerate(rows)
    ]
    write_shard(folder / "shard-00000.arrow", made)
    return folder


def test_json_counts_each_class_exactly_on_handmade_shards(tmp_path: Path) -> None:
    folder = handmade_shards(tmp_path / "handmade")
    assert json_classes(folder) == HANDMADE_CLASSES == shard_classes(folder)
    roles = {r.role: (r.positions, r.counted) for r in run_audit(open_shards(str(folder))).stats.roles}
    assert roles == {"user": (4, 0), "tool": (2, 0), "assistant": (16, 14), "template": (8, 0)}


def test_the_reasoning_lint_in_json_on_handmade_shards(tmp_path: Path) -> None:
    """Silent while one row trains reasoning; with none counted, every row that reads reasoning is counted."""
    assert not json_lint(handmade_shards(tmp_path / "trained"), "reasoning-never-trained")["fired"]
    untrained = [
        (classes, [0 if c == R else m for c, m in zip(classes, counted, strict=True)]) for classes, counted in HANDMADE
    ]
    lint = json_lint(handmade_shards(tmp_path / "untrained", untrained), "reasoning-never-trained")
    assert (lint["fired"], lint["count"], lint["rows"], lint["records"]) == (True, 2, 2, 0)
    assert lint["breakdown"] == {"reasoning token(s) in the context, none counted": 5}
    assert [(e["row"], e["position"]) for e in lint["examples"]] == [(0, 4), (2, 3)]  # target positions of the first R
    assert lint["severity"] == "warning" and "--no-train-reasoning" in lint["hint"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("classes") / "classes.jsonl", RECORDS)


def test_json_counts_reasoning_tool_calls_tool_output_and_stop_of_a_prepare_run(records: str, tmp_path: Path) -> None:
    folder = prepare_shards(tmp_path / "s", [records])
    classes = json_classes(folder)
    assert classes == shard_classes(folder)
    # Each from the text the template writes for it, encoded alone (the ChatML template puts reasoning in
    # <think> tags and calls in <tool_call> tags), so the numbers do not come from the audit's own reading.
    assert classes["reasoning"] == (encoded_length(f"<think>\n{REASONING}\n</think>\n\n"),) * 2 == (32, 32)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert classes["tool_call"] == (encoded_length(call),) * 2
    assert classes["tool_output"] == (encoded_length(TOOL_OUTPUT), 0)
    assert classes["end_of_turn"] == (4, 4)  # one <|im_end|> per assistant turn, all trained


@pytest.mark.parametrize(
    ("option", "label", "lints"),
    [
        ("train_reasoning", "reasoning", ["reasoning-never-trained"]),
        ("train_tool_calls", "tool_call", []),  # an untrained call still ends its turn and is not empty
        ("train_end_of_turn", "end_of_turn", ["eot-not-counted"]),
    ],
)
def test_a_class_left_untrained_moves_to_the_context_and_nothing_else_changes(
    records: str, tmp_path: Path, option: str, label: str, lints: list[str]
) -> None:
    trained = json_classes(prepare_shards(tmp_path / "trained", [records]))
    folder = prepare_shards(tmp_path / "untrained", [records], **{option: False})
    untrained = json_classes(folder)
    assert untrained[label] == (trained[label][0], 0) and trained[label][1] == trained[label][0] > 0
    assert {k: v for k, v in untrained.items() if k != label} == {k: v for k, v in trained.items() if k != label}
    assert audit_json(folder)["fired"] == lints


def test_roles_list_their_classes_on_their_own_lines(tmp_path: Path) -> None:
    stats = run_audit(open_shards(str(handmade_shards(tmp_path / "handmade")))).stats
    listed = {role.role: [c.label for c in classes] for role, classes in stats.by_role()}
    assert listed == {
        "user": [],  # its one class is the role itself
        "tool": ["tool_output"],
        "assistant": ["assistant", "reasoning", "tool_call", "end_of_turn"],
        "template": ["header"],
    }


def test_the_terminal_lists_and_counts_each_class(tmp_path: Path) -> None:
    report = run_audit(open_shards(str(handmade_shards(tmp_path / "handmade"))), show=0)
    console = Console(color_system=None, width=160, record=True)
    print_report(report, console)
    out = console.export_text()
    assert "tokens per role and class" in out
    for label, (targets, counted) in HANDMADE_CLASSES.items():
        share = f"{100 * counted / targets:.1f}"
        assert re.search(rf"^\s*{label}\s+\W\s+{targets}\s+\W\s+{counted}\s+\W\s+{share}\s*$", out, re.M), label
    assert re.search(r"^assistant\s+\W\s+16\s+\W\s+14\s+\W\s+87\.5\s*$", out, re.M)


def test_each_class_has_its_own_look_in_the_terminal_and_the_legend_names_it(tmp_path: Path) -> None:
    report = run_audit(open_shards(str(handmade_shards(tmp_path / "handmade"))), rows=[0, 1, 2])
    console = Console(force_terminal=True, color_system="truecolor", width=200)
    looks: dict[tuple[int, bool], set[tuple[str, bool]]] = {}
    for view in report.shown:
        text = row_text(view, console)
        for span, token in zip(text.spans[1:], view.tokens[1:], strict=True):
            look = span.style  # type: ignore[union-attr]
            color = (look.bgcolor if token.counted else look.color).triplet.hex  # type: ignore[union-attr]
            looks.setdefault((token.cls, token.counted), set()).add((color, bool(look.italic)))  # type: ignore[arg-type]
    assert all(len(found) == 1 for found in looks.values())
    colors = {cls: next(iter(found))[0] for (cls, _), found in looks.items()}
    assert colors[R] == STYLES[R].color and looks[(R, True)] == looks[(R, False)] == {(STYLES[R].color, True)}
    assert len({colors[c] for c in (R, A, K, T, E)}) == 5
    shown = legend(console).plain
    assert all(f" {label} " in shown for label in DISTINCT_LABELS)
    counted_part = shown.split("counted:", 1)[1]
    assert all(f" {STYLES[c].label} " in counted_part for c in GENERATED_CLASSES)


def _lab(color: str) -> tuple[float, float, float]:
    """CIE L*a*b* of an sRGB hex color (D65)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(int(color[i : i + 2], 16) / 255) for i in (1, 3, 5))
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _contrast_on_white(color: str) -> float:
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 1.05 / (0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2] + 0.05)


def test_the_palette_keeps_the_classes_of_a_turn_apart() -> None:
    """Colors differ enough to tell apart (CIE76 delta E): >= 40 between the classes that meet in an assistant
    turn and the tool output it reads, >= 20 between any two classes; each readable as text on white."""

    def distance(a: int, b: int) -> float:
        return sum((p - q) ** 2 for p, q in zip(_lab(STYLES[a].color), _lab(STYLES[b].color), strict=True)) ** 0.5

    turn = sorted({*GENERATED_CLASSES, C.TOOL})
    close = [(STYLES[a].label, STYLES[b].label) for a, b in itertools.combinations(turn, 2) if distance(a, b) < 40]
    assert not close, close
    close = [(STYLES[a].label, STYLES[b].label) for a, b in itertools.combinations(STYLES, 2) if distance(a, b) < 20]
    assert not close, close
    assert all(_contrast_on_white(entry.color) >= 3 for entry in STYLES.values())
    assert {STYLES[c].css for c in DISTINCT_CLASSES} == {"reasoning", "tool-call", "tool-output", "end-of-turn"}
    assert {STYLES[c].label for c in DISTINCT_CLASSES} == DISTINCT_LABELS


class ClassMarkup(HTMLParser):
    """What the HTML report says about classes: legend entries, token spans per class, the class table."""

    def __init__(self) -> None:
        super().__init__()
        self.legend: list[tuple[str, list[str]]] = []  # (label, span classes)
        self.spans: dict[int, set[str]] = {}  # class id -> the span classes its tokens carry
        self.table: dict[tuple[str, str], list[str]] = {}  # class table line ("role" | "class", label) -> cells
        self._where: str | None = None
        self._line: tuple[str, str] | None = None
        self._cell: list[str] | None = None
        self._legend_span: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "div" and "legend" in classes:
            self._where = "legend"
        elif tag == "table" and values.get("id") == "class-table":
            self._where = "table"
        elif tag == "div" and "tokens" in classes:
            self._where = "tokens"
        if tag == "span" and self._where == "legend" and "sw" in classes:
            self._legend_span = classes
        if tag == "span" and self._where == "tokens" and values.get("data-c") is not None:
            self.spans.setdefault(int(values["data-c"] or -1), set()).update(c for c in classes if c not in "km")
        if tag == "tr" and self._where == "table" and values.get("data-label"):
            self._line = (str(values.get("class")), str(values["data-label"]))
            self.table[self._line] = []
        if tag == "td" and self._line is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._legend_span is not None:
            self.legend.append((data, self._legend_span))
            self._legend_span = None
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._line is not None:
            self.table[self._line].append("".join(self._cell).strip())
            self._cell = None
        if (tag, self._where) in (("table", "table"), ("div", "legend")):
            self._where = None
            self._line = None


def parse_classes(report: AuditReport) -> tuple[ClassMarkup, str]:
    html = render_html(report)
    markup = ClassMarkup()
    markup.feed(html)
    return markup, html


def test_the_html_names_counts_and_marks_each_class(tmp_path: Path) -> None:
    report = run_audit(open_shards(str(handmade_shards(tmp_path / "handmade"))), rows=[0, 1, 2])
    markup, html = parse_classes(report)
    context_legend = {label for label, classes in markup.legend if "k" not in classes}
    counted_legend = {label for label, classes in markup.legend if "k" in classes}
    assert {entry.label for entry in STYLES.values()} == context_legend
    assert {STYLES[c].label for c in GENERATED_CLASSES} == counted_legend
    for cls in DISTINCT_CLASSES:  # the tokens of each distinct class carry its name, and only they do
        assert markup.spans[cls] == {"t", f"c{int(cls)}", STYLES[cls].css}
    assert markup.spans[A] == {"t", f"c{int(A)}"}
    assert f".c{int(R)} {{ --c: {STYLES[R].color}; --t: " in html and "font-style: italic; }" in html
    for label, (targets, counted) in HANDMADE_CLASSES.items():
        cells = markup.table[("class", label) if ("class", label) in markup.table else ("role", label)]
        assert cells[0] == label and cells[1:4] == [str(targets), str(counted), str(targets - counted)], label
    assert markup.table[("role", "assistant")][1:3] == ["16", "14"]
    assert [line for line in markup.table if line[0] == "role"] == [
        ("role", role) for role in ("user", "tool", "assistant", "template")
    ]


def test_the_sample_mode_counts_the_classes_as_the_shards_do(records: str, tmp_path: Path) -> None:
    shards = prepare_shards(tmp_path / "s", [records], train_reasoning=False)
    sample = audit_sample([records], train_reasoning=False)
    assert {c.label: (c.positions, c.counted) for c in sample.stats.classes} == json_classes(shards)
    lint = json_lint(shards, "reasoning-never-trained")
    assert (lint["rows"], lint["breakdown"]) == (1, {"reasoning token(s) in the context, none counted": 32})
    assert sample.lints[[lint.code for lint in sample.lints].index("reasoning-never-trained")].rows == 1
