"""The HTML report folds long untrained stretches (saying how many tokens they hold), so an example opens near its
first counted token, and bar values never run past the card's edge."""

from __future__ import annotations

import re
from pathlib import Path

from audit_testkit import LESSON, audit_shards, prepare_shards, write_jsonl
from browser import dump_dom, find_chromium
from lossmask.audit.charts import WIDTH, BarRow, bars
from lossmask.audit.htmlreport import FOLD_HEAD, FOLD_TAIL, render_html, write_html
from test_audit_html import assert_counts_match

LONG_SYSTEM = {"role": "system", "content": " ".join(f"Rule {i}: answer briefly and cite sources." for i in range(80))}


def long_prompt_shards(tmp_path: Path) -> Path:
    records = [{"messages": [LONG_SYSTEM, *LESSON]}, {"messages": LESSON}]
    return prepare_shards(tmp_path / "s", [write_jsonl(tmp_path / "long.jsonl", records)])


def test_a_long_untrained_stretch_is_folded_with_its_count(tmp_path: Path) -> None:
    shards = long_prompt_shards(tmp_path)
    report = audit_shards(shards, rows=[0, 1])
    html = render_html(report)
    folds = re.findall(r'<details class="fold"><summary>⋯ ([\d,]+) tokens of context, none counted', html)
    assert len(folds) == 1  # the long system prompt; the short row is not folded
    view = next(v for v in report.views() if v.row == 0)
    first_counted = next(i for i, t in enumerate(view.tokens) if t.counted)
    assert int(folds[0].replace(",", "")) == first_counted - FOLD_HEAD - FOLD_TAIL
    box = html.split('data-row="0"')[1].split('<details class="fold">')[0]
    assert box.count('class="t') == FOLD_HEAD  # in view before the fold: its first tokens only
    assert_counts_match(html, shards, [0, 1])  # every token is still there, counted as in the shards


def test_a_link_to_a_folded_token_opens_its_fold(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        import pytest

        pytest.skip("Chromium is not installed")
    shards = long_prompt_shards(tmp_path)
    path = tmp_path / "report.html"
    write_html(audit_shards(shards, rows=[0]), path)
    loaded = dump_dom(chromium, path.as_uri() + f"#tok-0-{FOLD_HEAD + 5}")
    assert loaded.console == []
    assert re.search(r'<details class="fold" open', loaded.stdout)


def test_bar_values_stay_inside_the_chart() -> None:
    rows = [
        BarRow("assistant", 12_345_678, 9_876_543, "#000", "#eee"),
        BarRow("user", 1_000, 10, "#000", "#eee"),
    ]
    svg = bars(rows, "targets")
    for x, text in re.findall(r'<text class="value" x="([\d.]+)"[^>]*>([^<]*)</text>', svg):
        assert float(x) + 6.5 * len(text) <= WIDTH, text
