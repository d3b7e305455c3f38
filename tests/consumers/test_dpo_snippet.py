"""The DPOTrainer blocks of README.md and docs/preference.md, run as written on a pairs export: a tiny
random-weight Llama (as tests/consumers/test_snippets.py builds it) saved where they say "path/to/model", the
export where they say "hf/", CPU, a few steps. TRL's collator must count exactly lossmask's counted targets."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from lossmask.export.hf import export_hf
from lossmask.loader.shards import ShardSet

from ..support import FIXTURE_TOKENIZER, read_rows, run_prepare, write_jsonl
from ..test_preference_prepare import SHAPES
from .tiny_llama import save_tiny_llama

torch = pytest.importorskip("torch", reason="PyTorch (the pinned CPU wheel) is in the dev extra")
transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra")
pytest.importorskip("trl", reason="TRL is not installed: it is in the dev extra (trl==1.16.0, CPU torch)")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def dpo_snippets() -> list[tuple[str, str]]:
    runs = []
    for name in ("README.md", "docs/preference.md"):
        for block in re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(encoding="utf-8"), re.DOTALL):
            if "DPOTrainer" in block:
                assert block.startswith("# hf/ holds a pairs export"), f"{name}: say which export the snippet reads"
                runs.append((name, block))
    return runs


SNIPPETS = dpo_snippets()


def test_the_docs_show_the_dpo_snippet():
    assert [name for name, _ in SNIPPETS] == ["README.md", "docs/preference.md"]
    assert SNIPPETS[0][1] == SNIPPETS[1][1], "README.md and docs/preference.md show different DPOTrainer snippets"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """(model folder, hf export, shard rows): a 2-layer Llama with random weights and the fixture tokenizer."""
    folder = tmp_path_factory.mktemp("model")
    save_tiny_llama(folder, FIXTURE_TOKENIZER)
    data = tmp_path_factory.mktemp("data")
    values = [value for value, _ in SHAPES.values()] * 2
    _, shards = run_prepare(data, [write_jsonl(data / "pairs.jsonl", values)])
    export_hf(ShardSet(shards), data / "hf")
    return folder, data / "hf", sorted(read_rows(shards), key=lambda r: r["record_index"])


@pytest.mark.parametrize(("source", "code"), SNIPPETS[:1], ids=[s for s, _ in SNIPPETS[:1]])
def test_the_dpo_snippet_trains_and_trl_counts_what_lossmask_counts(source, code, setup, tmp_path, monkeypatch):
    model, hf, rows = setup
    (tmp_path / "path" / "to").mkdir(parents=True)
    shutil.copytree(model, tmp_path / "path" / "to" / "model")
    shutil.copytree(hf, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    scope: dict = {}
    try:
        exec(compile(code, f"{source} snippet", "exec"), scope)
    except (ImportError, OSError, RuntimeError) as exc:  # a TRL or torch that cannot run here: say why
        pytest.skip(f"TRL's DPOTrainer cannot run here: {type(exc).__name__}: {exc}")
    trainer = scope["trainer"]
    assert trainer.state.global_step >= 2
    (summary,) = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    assert abs(summary["train_loss"] - 0.6931) < 0.05  # random weights, few steps: DPO's loss stays near log 2
    batch = trainer.data_collator([trainer.train_dataset[k] for k in range(len(rows))])
    counted = batch["completion_mask"].sum(dim=1).tolist()  # chosen sequences first, then rejected
    assert counted == [r["chosen_num_loss_tokens"] for r in rows] + [r["rejected_num_loss_tokens"] for r in rows]
