"""The context the local engine's forkserver builds for its workers (`engines.preloaded`) is used only for the
job it was built for: the same config and the same tokenizer and template files."""

import dataclasses
import os
import shutil

from lossmask.engines import preloaded
from lossmask.pipeline.config import PrepareConfig

from .support import FIXTURE_TOKENIZER


def test_the_context_is_used_only_for_its_config_and_files(tmp_path, monkeypatch):
    folder = tmp_path / "tok"
    shutil.copytree(FIXTURE_TOKENIZER, folder)
    config = PrepareConfig(tokenizer=str(folder), out=str(tmp_path / "out"))
    context = object()
    monkeypatch.setattr(preloaded, "CONTEXT", (config, preloaded.signature(config), context))
    assert preloaded.context_for(dataclasses.replace(config)) is context  # an equal config
    assert preloaded.context_for(dataclasses.replace(config, batch_size=7)) is None
    tokenizer_json = folder / "tokenizer.json"
    stat = tokenizer_json.stat()
    os.utime(tokenizer_json, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the tokenizer changed
    assert preloaded.context_for(config) is None


def test_no_context_without_files_to_check(tmp_path, monkeypatch):
    config = PrepareConfig(tokenizer="org/model", out=str(tmp_path / "out"))  # a Hub id
    assert preloaded.signature(config) is None
    monkeypatch.setattr(preloaded, "CONTEXT", (config, None, object()))
    assert preloaded.context_for(config) is None
    monkeypatch.setattr(preloaded, "CONTEXT", None)
    assert preloaded.context_for(config) is None
