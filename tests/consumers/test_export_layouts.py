"""The document exports take SFT shards only: KTO and preference-pair shards are refused before anything is written.

A KTO shard is an SFT row plus a `label` (desirable or not). Read as SFT documents it would train the undesirable
answers too, and the label has no place in any trainer layout here, so every document export refuses it; pair
shards have no SFT columns and go to `--to hf` (TRL's DPO columns).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.errors import SetupError
from lossmask.export import export_datatrove, export_mds, export_megatron_bridge, export_memmap, export_olmo_core
from lossmask.jobs.prepare import prepare
from lossmask.loader.shards import ShardSet
from lossmask.pipeline.config import PrepareConfig

from .conftest import TOKENIZER

EXPORTS = {
    "olmo-core": export_olmo_core,
    "datatrove": export_datatrove,
    "mds": export_mds,
    "megatron-bridge": export_megatron_bridge,
    "numpy": export_memmap,
}


def prepared(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Path:
    """Six KTO records (half judged undesirable) or six preference pairs, prepared with the fixture tokenizer."""
    folder = tmp_path_factory.mktemp(kind)
    records = []
    for i in range(6):
        prompt = [{"role": "user", "content": f"question {i}"}]
        if kind == "kto":
            records.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "an answer"}]})
            records[-1]["label"] = i % 2 == 0
        else:
            records.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": "good"}],
                    "rejected": [{"role": "assistant", "content": "bad"}],
                }
            )
    source = folder / f"{kind}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = folder / "shards"
    fmt = "kto" if kind == "kto" else "preference"
    prepare(
        PrepareConfig.from_mapping(
            {"inputs": [str(source)], "format": fmt, "tokenizer": str(TOKENIZER), "out": str(out)}
        )
    )
    return out


@pytest.fixture(scope="module")
def kto_dir(tmp_path_factory):
    return prepared(tmp_path_factory, "kto")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    return prepared(tmp_path_factory, "pairs")


@pytest.mark.parametrize("target", sorted(EXPORTS))
def test_kto_shards_are_refused_before_anything_is_written(kto_dir, tmp_path, target):
    assert ShardSet(kto_dir).layout == "kto"
    with pytest.raises(SetupError, match=r"KTO rows .* would train every answer"):
        EXPORTS[target](ShardSet(kto_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", sorted(EXPORTS))
def test_pair_shards_are_sent_to_the_hf_export(pairs_dir, tmp_path, target):
    result = CliRunner().invoke(main, ["export", str(pairs_dir), "--to", target, str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("lossmask: error:") == 1 and "export pairs with --to hf" in result.output
    assert not (tmp_path / "out").exists()
