"""One option table: every flag's long name is a config key, old spellings keep working, and an unknown key at any
depth stops the job (exit 2) with one line naming the closest valid key."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.errors import SetupError
from lossmask.jobs.cli import prepare as prepare_command
from lossmask.pipeline.config import PrepareConfig, canonical_key

from .support import DATA, FIXTURE_TOKENIZER

NOT_CONFIG = {"config_file", "quiet", "help"}


def test_every_flag_long_name_is_its_config_key():
    checked = 0
    for param in prepare_command.params:
        if param.name in NOT_CONFIG or param.name == "inputs":
            continue
        dest = "format" if param.name == "format_" else param.name
        for opt in param.opts:
            if opt.startswith("--"):
                assert canonical_key(opt[2:]) == dest, (opt, dest)
                assert opt[2:].replace("-", "_") in PrepareConfig.config_keys()
                checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"train_eot": False}, {"train_end_of_turn": False}),
        ({"train-eot": False}, {"train_end_of_turn": False}),
        ({"train_end_of_turn": False}, {"train_end_of_turn": False}),
        ({"generation_tags": False}, {"use_generation_tags": False}),
        ({"use_generation_tags": False}, {"use_generation_tags": False}),
        ({"max-length": 64}, {"max_length": 64}),
    ],
)
def test_flag_names_and_old_spellings(values, expected):
    config = PrepareConfig.from_mapping(values)
    for key, value in expected.items():
        assert getattr(config, key) == value


def test_the_same_option_twice_is_an_error():
    with pytest.raises(SetupError, match="given twice"):
        PrepareConfig.from_mapping({"train_eot": False, "train_end_of_turn": True})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train_eto": False}, "unknown config key 'train_eto' in the config: did you mean 'train_eot'?"),
        ({"fields": {"mesages": "dialog"}}, "unknown config key 'mesages' in fields: did you mean 'messages'?"),
        ({"roles": {"bot": "asistant"}}, "did you mean 'assistant'?"),
        (
            {"datasets": [{"path": "a.jsonl", "feilds": {}}]},
            "unknown config key 'feilds' in datasets[0]: did you mean 'fields'?",
        ),
        (
            {"datasets": [{"path": "a.jsonl", "fields": {"conversatons": "c"}}]},
            "unknown config key 'conversatons' in datasets[0].fields: did you mean 'conversations'?",
        ),
        ({"eval": {"fracton": 0.1}}, "unknown config key 'fracton' in eval: did you mean 'fraction'?"),
    ],
)
def test_unknown_keys_at_any_depth(values, message):
    with pytest.raises(SetupError) as info:
        PrepareConfig.from_mapping(values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_nested_key_exits_2_with_a_suggestion(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"datasets": [{"path": str(DATA / "openai.jsonl"), "fields": {"mesages": "x"}}]}))
    args = ["prepare", "--config", str(config), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "did you mean 'messages'?" in result.output and "Traceback" not in result.output
