"""`lossmask audit` on the command line: targets, terminal output with and without color, --json, --fail-on."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from audit_testkit import FIXTURE_DATA, LESSON, TOKENIZER, audit_shards, prepare_shards, write_jsonl
from click.testing import CliRunner
from lossmask.audit import AuditReport, run_audit, run_sample
from lossmask.audit.lints import CODES
from lossmask.audit.terminal import CLOSE, OPEN, row_text
from lossmask.cli import main
from lossmask.pipeline.config import PrepareConfig
from rich.console import Console


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["audit", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def lesson_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lesson")
    return prepare_shards(tmp / "shards", [write_jsonl(tmp / "lesson.jsonl", [{"messages": LESSON}])])


def test_plain_output_brackets_exactly_the_counted_tokens(lesson_shards: Path) -> None:
    code, out, _ = invoke(str(lesson_shards), "--row", "0")
    assert code == 0
    # Not a terminal: no color codes, counted spans in brackets.
    assert "\x1b[" not in out
    assert f"{OPEN}The capital of France is Paris.<|im_end|>{CLOSE}" in out
    assert "<|im_start|>user\nWhat's the capital of France?<|im_end|>\n<|im_start|>assistant\n" + OPEN in out


def test_plain_brackets_match_the_shards_on_every_fixture_row(clean_report: AuditReport) -> None:
    console = Console(color_system=None, width=200)
    for view in clean_report.views():
        text = row_text(view, console).plain
        inside = "".join(re.findall(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), text, flags=re.S))
        assert inside == "".join(t.text for t in view.tokens if t.counted)
        assert text.replace(OPEN, "").replace(CLOSE, "") == "".join(t.text for t in view.tokens)


def test_color_output_gives_counted_tokens_a_background(clean_report: AuditReport) -> None:
    console = Console(force_terminal=True, color_system="truecolor", width=200)
    view = clean_report.shown[0]
    text = row_text(view, console)
    assert OPEN not in text.plain
    assert len(text.spans) == len(view.tokens)
    for span, token in zip(text.spans, view.tokens, strict=True):
        assert (span.style.bgcolor is not None) == token.counted  # type: ignore[union-attr]


def test_explain_prints_the_lesson_table(lesson_shards: Path) -> None:
    code, out, _ = invoke(str(lesson_shards), "--show", "0", "--explain", "0")
    assert code == 0
    assert "context -> next token -> counted?" in out
    lines = [line for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    table = ds.dataset(str(lesson_shards), format="arrow").to_table()
    assert len(lines) == table["num_tokens"][0].as_py()
    assert sum(line.rstrip().endswith("yes") for line in lines) == table["num_loss_tokens"][0].as_py()
    assert re.search(r"Paris\s+\d+\s+assistant\s+yes", out)


def test_json_summary_is_machine_readable_and_deterministic(clean_shards: Path) -> None:
    code, out, _ = invoke(str(clean_shards), "--json")
    assert code == 0
    summary = json.loads(out)
    again = json.loads(invoke(str(clean_shards), "--json")[1])
    assert summary == again
    assert summary["mode"] == "shards" and summary["layout"] == "rows"
    assert summary["fired"] == ["duplicate-examples"]
    table = ds.dataset(str(clean_shards), format="arrow").to_table()
    assert summary["statistics"]["rows"] == table.num_rows
    assert summary["statistics"]["counted"] == sum(table["num_loss_tokens"].to_pylist())
    codes = [lint["code"] for lint in summary["lints"]]
    assert codes == list(CODES)  # every lint, fired or silent, in the stable order
    lint = summary["lints"][codes.index("duplicate-examples")]
    assert lint["severity"] == "warning" and lint["count"] == lint["rows"] > 0 and lint["examples"]
    columns = (table["input_ids"].to_pylist(), table["target_ids"].to_pylist(), table["loss_mask"].to_pylist())
    distinct = {(*ids, targets[-1], -1, *mask) for ids, targets, mask in zip(*columns, strict=True)}
    assert lint["rows"] == table.num_rows - len(distinct)  # every row but the first of each token sequence and mask


def test_fail_on_gates_a_pipeline(clean_shards: Path) -> None:
    assert invoke(str(clean_shards), "--fail-on", "duplicate-examples", "-q")[0] == 1
    assert invoke(str(clean_shards), "--fail-on", "warning", "-q")[0] == 1
    assert invoke(str(clean_shards), "--fail-on", "double-bos,eot-missing", "-q")[0] == 0
    assert invoke(str(clean_shards), "--fail-on", "error", "-q")[0] == 0
    code, _, err = invoke(str(clean_shards), "--fail-on", "duplicate-examples", "--json")
    assert code == 1 and err == ""
    code, _, err = invoke(str(clean_shards), "--fail-on", "dublicate-examples")
    assert code == 2 and "unknown lint code(s): dublicate-examples" in err


def test_setup_errors_exit_2_with_one_message(clean_shards: Path, tmp_path: Path) -> None:
    cases = [
        ([str(clean_shards), "--row", "100000"], "row 100000 does not exist"),
        ([str(clean_shards), "--mask", "all"], "--mask: these apply to raw inputs only"),
        ([FIXTURE_DATA[0]], "needs --tokenizer"),
        ([str(tmp_path / "missing.jsonl"), "--tokenizer", TOKENIZER], "missing.jsonl"),
        ([str(clean_shards), "--tokenizer", str(tmp_path / "nope")], "does not exist"),
    ]
    for args, message in cases:
        code, out, err = invoke(*args)
        assert code == 2, (args, out, err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_shards_that_are_not_the_ones_prepare_wrote_are_refused(lesson_shards: Path, tmp_path: Path) -> None:
    """The audit reads shards through the loader's ShardSet: the same checks as every reader, sha256 included."""
    copy = tmp_path / "shards"
    shutil.copytree(lesson_shards, copy)
    manifest = json.loads((copy / "_manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64  # as if the shard had changed since prepare
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    code, _, err = invoke(str(copy))
    assert code == 2 and "does not match the sha256" in err and err.count("\n") == 1
    manifest["schema_version"] = 99
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    code, _, err = invoke(str(copy))
    assert code == 2 and "schema_version 99" in err and err.count("\n") == 1


def test_raw_inputs_run_the_pipeline_on_a_sample_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(FIXTURE_DATA[0]).parent
    before = sorted(data.rglob("*"))
    monkeypatch.chdir(tmp_path)
    code, out, _ = invoke(*FIXTURE_DATA, "--tokenizer", TOKENIZER, "--sample", "50", "--json")
    assert code == 0
    assert list(tmp_path.iterdir()) == [] and sorted(data.rglob("*")) == before
    summary = json.loads(out)
    assert summary["mode"] == "sample"
    assert summary["records"]["read"] == 50


def test_the_sample_mode_sees_what_prepare_writes(clean_shards: Path, clean_report: AuditReport) -> None:
    sample = run_audit(run_sample(PrepareConfig(inputs=FIXTURE_DATA, tokenizer=TOKENIZER), 10**6))
    assert sample.stats.to_dict() == clean_report.stats.to_dict()
    assert [lint.to_dict() for lint in sample.lints] == [lint.to_dict() for lint in audit_shards(clean_shards).lints]


def test_audit_accepts_every_option_of_prepare_that_shapes_rows() -> None:
    prepare, audit = main.get_command(None, "prepare"), main.get_command(None, "audit")
    output_only = {
        "out",
        "strict",
        "shard_max_rows",
        "unit_bytes",
        "quiet",
        "workers",
        "engine",
        "resume",
        "overwrite",
        "encoder",
    }  # never shape rows
    combine_only = {"pack", "pack_window", "concat"}  # combine documents after the stages the audit runs
    prepare_options = {p.name for p in prepare.params if isinstance(p, type(prepare.params[1]))} - output_only
    prepare_options -= combine_only
    audit_options = {p.name for p in audit.params}
    assert prepare_options - {"inputs"} <= audit_options
    by_name = {p.name: p for p in audit.params}
    for param in prepare.params:
        if param.name in by_name and param.name not in ("inputs", "tokenizer"):
            assert by_name[param.name].opts == param.opts, param.name


def test_packed_shards_are_audited_as_the_documents_they_hold(tmp_path: Path) -> None:
    """Packing changes rows, not documents: the packed set's statistics and lints equal the unpacked set's."""
    inputs = [p for p in FIXTURE_DATA if p.endswith(("openai.jsonl", "tools.jsonl"))]
    rows = audit_shards(prepare_shards(tmp_path / "rows", inputs))
    packed = audit_shards(prepare_shards(tmp_path / "packed", inputs, pack=512))
    assert packed.stats.to_dict() == rows.stats.to_dict()
    assert {lint.code: lint.count for lint in packed.lints} == {lint.code: lint.count for lint in rows.lints}


def test_data_that_looks_like_markup_is_printed_as_is(tmp_path: Path) -> None:
    """Mistral's "[/INST]" or "[bold]" in a message must reach the terminal verbatim, never as rich markup."""
    text = "Use [/INST] and [bold]this[/bold] literally."
    data = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": text}, LESSON[1]]}])
    code, out, err = invoke(data, "--tokenizer", TOKENIZER, "--row", "0", "--explain", "0")
    assert code == 0, err
    assert text in out  # the row view
    assert "[/INST]" in out.split("context -> next token")[1]  # and the lesson's table
