"""Tokenizers from anywhere: local file, local folder, Hub id. No network: `snapshot_download` is replaced."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.errors
import pytest
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.errors import SetupError
from lossmask.pipeline.hub import TOKENIZER_FILES, looks_like_hub_id
from lossmask.pipeline.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "fixtures" / "tokenizer"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub: `snapshot_download` records its calls and returns a snapshot folder with the fixture files."""
    calls = []

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns, **kwargs})
        folder = tmp_path / "cache" / repo_id.replace("/", "--") / (revision or "main")
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TOKENIZER / name, folder / name)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def failing_hub(monkeypatch, error: Exception) -> None:
    def snapshot_download(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def bare(cls: type[Exception], message: str) -> Exception:
    """An instance of a huggingface_hub error without its HTTP response (we only need its class)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def test_hub_ids_are_fetched_with_only_the_tokenizer_files(hub):
    info = load_tokenizer("someorg/some-model@v1.0")
    assert hub == [{"repo_id": "someorg/some-model", "revision": "v1.0", "allow_patterns": TOKENIZER_FILES}]
    assert info.path == "someorg/some-model@v1.0"  # the manifest records what the user asked for
    assert info.fingerprint == load_tokenizer(str(TOKENIZER)).fingerprint  # and the files' fingerprint
    assert info.chat_template and info.special_tokens["eos_token"] == "<|im_end|>"


def test_an_existing_local_path_wins_over_a_hub_id(hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(TOKENIZER, tmp_path / "someorg" / "some-model")
    info = load_tokenizer("someorg/some-model")
    assert hub == []
    assert info.vocab_size == 1024
    assert load_tokenizer(str(TOKENIZER / "tokenizer.json")).vocab_size == 1024  # a plain file still works


def test_offline_without_cache_says_how_to_use_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failing_hub(monkeypatch, huggingface_hub.errors.LocalEntryNotFoundError("outgoing traffic has been disabled"))
    with pytest.raises(SetupError) as error:
        load_tokenizer("someorg/some-model")
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert "hf download someorg/some-model tokenizer.json tokenizer_config.json --local-dir DIR" in message
    assert "--tokenizer DIR" in message


def test_no_network_says_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    failing_hub(monkeypatch, huggingface_hub.errors.LocalEntryNotFoundError("Name or service not known"))
    with pytest.raises(SetupError, match=r"cannot be reached.*--tokenizer DIR"):
        load_tokenizer("someorg/some-model")


def test_without_huggingface_hub_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(SetupError, match=r"pip install huggingface_hub.*--tokenizer DIR"):
        load_tokenizer("someorg/some-model")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("GatedRepoError", "is gated"),
        ("RepositoryNotFoundError", "neither a local path nor a Hub repository"),
        ("RevisionNotFoundError", "has no revision"),
    ],
)
def test_hub_failures_get_their_own_message(monkeypatch, error, expected):
    failing_hub(monkeypatch, bare(getattr(huggingface_hub.errors, error), "404"))
    with pytest.raises(SetupError, match=expected):
        load_tokenizer("someorg/some-model@nope")


def test_a_repository_without_tokenizer_json_says_how_to_convert(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    with pytest.raises(SetupError, match=r"no tokenizer\.json.*save_pretrained"):
        load_tokenizer("someorg/slow-only")


@pytest.mark.parametrize(
    ("spec", "hub_like"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", True),
        ("org/name@main", True),
        ("org/name@refs/pr/3", True),
        ("missing-folder", False),
        ("a/b/c", False),
        ("dir/tokenizer.json", False),
        ("./org/name", False),
    ],
)
def test_what_counts_as_a_hub_id(spec, hub_like):
    assert looks_like_hub_id(spec) is hub_like


def test_a_missing_path_that_is_no_hub_id_is_a_missing_path(hub):
    with pytest.raises(SetupError, match=r"does not exist; pass a tokenizer\.json, a model folder or a Hub id"):
        load_tokenizer("no/such/folder")
    assert hub == []


def test_prepare_takes_a_hub_id(hub, tmp_path):
    out = tmp_path / "shards"
    data = ROOT / "fixtures" / "data" / "lesson.jsonl"
    result = CliRunner().invoke(main, ["prepare", str(data), "--tokenizer", "someorg/some-model", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["config"]["tokenizer"] == "someorg/some-model"
    assert manifest["totals"]["rows"] == 1  # lesson.jsonl is one short conversation: one row


def test_prepare_offline_exits_2_with_one_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failing_hub(monkeypatch, huggingface_hub.errors.LocalEntryNotFoundError("offline"))
    data = ROOT / "fixtures" / "data" / "lesson.jsonl"
    result = CliRunner().invoke(main, ["prepare", str(data), "--tokenizer", "org/name", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.count("lossmask: error:") == 1 and "HF_HUB_OFFLINE" in result.output
