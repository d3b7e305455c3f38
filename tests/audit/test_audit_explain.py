"""`audit --explain R` prints the lesson's table (not the whole audit first), and its id column never cuts an id."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testkit import LESSON, audit_shards, prepare_shards, write_jsonl
from click.testing import CliRunner
from lossmask.audit.terminal import explain_table
from lossmask.cli import main
from rich.console import Console


@pytest.fixture(scope="module")
def lesson_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lesson")
    return prepare_shards(tmp / "shards", [write_jsonl(tmp / "lesson.jsonl", [{"messages": LESSON}])])


def test_explain_prints_the_table_not_the_audit(lesson_shards: Path) -> None:
    result = CliRunner().invoke(main, ["audit", str(lesson_shards), "--explain", "0"])
    assert result.exit_code == 0, result.output
    assert "context -> next token -> counted?" in result.output
    assert "lints" not in result.output and "tokens per role" not in result.output
    whole = CliRunner().invoke(main, ["audit", str(lesson_shards)])
    assert "tokens per role" in whole.output and "context -> next token" not in whole.output


@pytest.mark.parametrize("width", [60, 80])
def test_the_id_column_shows_whole_ids_in_a_narrow_terminal(lesson_shards: Path, width: int) -> None:
    report = audit_shards(lesson_shards, explain=0)
    view = report.explain
    console = Console(width=width, color_system=None, record=True)
    console.print(explain_table(view, console))
    lines = [line for line in console.export_text().splitlines() if line.strip()[:1].isdigit()]
    ids = [token.id for _, _, token in view.lesson()]
    assert len(lines) == len(ids)
    for line, token_id in zip(lines, ids, strict=True):
        assert f" {token_id} " in f"{line} ", line
    # 5-digit ids (a real vocabulary's): the column is as wide as the widest id
    for token in view.tokens:
        token.id += 10_000
    console = Console(width=width, color_system=None, record=True)
    console.print(explain_table(view, console))
    text = console.export_text()
    assert all(f" {token.id} " in text for _, _, token in view.lesson())
