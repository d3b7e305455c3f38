"""The shards: byte-identical across runs, bounded in size, and read back by real readers."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest
from lossmask.schemas.shards import SCHEMA_VERSION, SHARD_SCHEMA

from .support import DATA, read_table, run_prepare

INPUTS = [DATA / "openai.jsonl", DATA / "sharegpt.json", DATA / "tools.jsonl", DATA / "text.jsonl"]


def test_same_inputs_and_config_give_byte_identical_output(tmp_path):
    first, a = run_prepare(tmp_path, INPUTS, out_name="a", shard_max_rows=150)
    second, b = run_prepare(tmp_path, INPUTS, out_name="b", shard_max_rows=150, batch_size=7)
    assert len(first["shards"]) > 1
    for shard in first["shards"]:
        assert (a / shard["file"]).read_bytes() == (b / shard["file"]).read_bytes()
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]


def test_manifest_describes_the_run(tmp_path):
    _, out = run_prepare(tmp_path, [DATA / "lesson.jsonl"])
    on_disk = json.loads((out / "_manifest.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["layout"] == "rows"
    assert set(on_disk["schema"]) == set(SHARD_SCHEMA.names)
    fingerprints = on_disk["fingerprints"]
    assert len(fingerprints["inputs"][0]["sha256"]) == 64 and len(fingerprints["tokenizer"]["sha256"]) == 64
    assert fingerprints["template"]["name"].startswith("tokenizer:")
    assert on_disk["template"]["end_of_turn_markers"] == ["<|im_end|>"]
    assert on_disk["config"]["mask"] == "assistant"


def test_shards_are_arrow_ipc_files_with_the_schema(tmp_path):
    manifest, out = run_prepare(tmp_path, INPUTS)
    for shard in manifest["shards"]:
        with pa.memory_map(str(out / shard["file"])) as source:
            reader = pa.ipc.open_file(source)
            assert reader.schema.equals(SHARD_SCHEMA, check_metadata=True)
            assert reader.read_all().num_rows == shard["rows"]


def test_pyarrow_polars_and_datasets_read_the_same_rows(tmp_path):
    manifest, out = run_prepare(tmp_path, INPUTS, shard_max_rows=200)
    table = read_table(out)
    frame = pl.scan_ipc(str(out / "*.arrow")).collect()
    assert table.num_rows == frame.height == manifest["totals"]["rows"]
    assert frame["num_loss_tokens"].sum() == manifest["totals"]["loss_tokens"]
    assert frame.schema["input_ids"] == pl.List(pl.Int32) and frame.schema["loss_mask"] == pl.List(pl.UInt8)
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in out.glob("*.arrow"))
    loaded = datasets.load_dataset("arrow", data_files=files, split="train")
    assert loaded.num_rows == table.num_rows
    assert loaded[0]["input_ids"] == table.column("input_ids")[0].as_py()
