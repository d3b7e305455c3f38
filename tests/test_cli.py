"""The command line: exit codes, config files with flag overrides, and clear messages instead of tracebacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from lossmask.cli import main

from .support import DATA, FIXTURE_TOKENIZER, FIXTURES, read_rows


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_prepare_prints_where_the_output_is(tmp_path):
    result = invoke(
        "prepare", str(DATA / "lesson.jsonl"), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert f"{tmp_path}/_manifest.json" in result.output and "1 read = 1 written" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl", "--tokenizer", str(FIXTURE_TOKENIZER)], "does not exist"),
        (
            [str(DATA / "lesson.jsonl"), "--tokenizer", "no/such/tokenizer"],
            "tokenizer 'no/such/tokenizer' does not exist",
        ),
        (
            [str(DATA / "lesson.jsonl"), "--tokenizer", str(FIXTURE_TOKENIZER), "--chat-template", "nope"],
            "neither a file",
        ),
        ([str(DATA / "lesson.jsonl")], "no tokenizer given"),
    ],
)
def test_setup_errors_exit_2_with_one_message(tmp_path, args, message):
    result = CliRunner().invoke(main, ["prepare", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def prepare_with_template(tmp_path, template_text: str):
    template = tmp_path / "template.jinja"
    template.write_text(template_text)
    args = ["prepare", str(DATA / "lesson.jsonl"), "--tokenizer", str(FIXTURE_TOKENIZER), "--chat-template"]
    return CliRunner().invoke(main, [*args, str(template), "--out", str(tmp_path / "out")])


def test_a_template_that_cannot_render_exits_2(tmp_path):
    result = prepare_with_template(tmp_path, "{{ raise_exception('this template renders nothing') }}")
    assert result.exit_code == 2 and "this template renders nothing" in result.output
    result = prepare_with_template(tmp_path, "{% for m in messages %}")
    assert result.exit_code == 2 and "syntax error" in result.output


def test_bad_records_exit_0_unless_strict(tmp_path):
    args = ["prepare", str(FIXTURES / "bad" / "malformed.jsonl"), "--tokenizer", str(FIXTURE_TOKENIZER)]
    assert invoke(*args, "--out", str(tmp_path / "a")).exit_code == 0
    assert invoke(*args, "--out", str(tmp_path / "b"), "--strict").exit_code == 1


@pytest.mark.parametrize("kind", ["yaml", "toml"])
def test_config_file_with_flag_overrides(tmp_path, kind):
    if kind == "yaml":
        config = tmp_path / "job.yaml"
        config.write_text(
            f"inputs: [{DATA / 'lesson.jsonl'}]\ntokenizer: {FIXTURE_TOKENIZER}\nmask: all\nmax_length: 64\n"
        )
    else:
        config = tmp_path / "job.toml"
        config.write_text(
            f'inputs = ["{DATA / "lesson.jsonl"}"]\ntokenizer = "{FIXTURE_TOKENIZER}"\nmask = "all"\nmax-length = 64\n'
        )
    out = tmp_path / "out"
    result = invoke("prepare", "--config", str(config), "--out", str(out), "--mask", "assistant")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["config"]["mask"] == "assistant"  # the flag wins
    assert manifest["config"]["max_length"] == 64  # the file's value stays
    (row,) = read_rows(out)
    assert 0 < row["num_loss_tokens"] < row["num_tokens"]
    # Exactly the row the same options make as flags alone.
    args = ["--tokenizer", str(FIXTURE_TOKENIZER), "--mask", "assistant", "--max-length", "64"]
    assert invoke("prepare", str(DATA / "lesson.jsonl"), *args, "--out", str(tmp_path / "flags")).exit_code == 0
    (expected,) = read_rows(tmp_path / "flags")
    assert (row["num_loss_tokens"], row["loss_mask"]) == (expected["num_loss_tokens"], expected["loss_mask"])


def test_unknown_config_keys_and_bad_choices_are_named(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("tokenizer: x\nmax_lenght: 5\n")
    result = CliRunner().invoke(main, ["prepare", "--config", str(config)])
    assert result.exit_code == 2 and "max_lenght" in result.output
    config.write_text("tokenizer: x\noverflow: wrap\n")
    result = CliRunner().invoke(main, ["prepare", "--config", str(config)])
    assert result.exit_code == 2 and "overflow must be one of truncate, drop" in result.output
