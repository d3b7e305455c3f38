"""`lossmask export --to hf`: the round trip to the shards, what `datasets` and transformers make of it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from lossmask.errors import SetupError
from lossmask.export.hf import export_hf
from lossmask.loader.shards import ShardSet
from lossmask.schemas.exports import EXPORT_INFO_NAME


def shard_table(directory) -> pa.Table:
    return ds.dataset(str(directory), format="arrow").to_table()


def read_export(out, file_format="parquet") -> pa.Table:
    files = sorted(out.glob(f"*.{file_format}"))
    if file_format == "parquet":
        return pa.concat_tables(pq.read_table(f) for f in files)
    tables = []
    for f in files:
        with pa.OSFile(str(f)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def hf_export(prepared_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "export"
    info = export_hf(ShardSet(prepared_dir), out)
    return out, info


def test_round_trip_every_row(prepared_dir, hf_export):
    """For every row: labels shifted left by one = target_ids where loss_mask is 1, else -100; input_ids is the
    shard's input_ids plus the last target; attention all ones; positions 0..n."""
    out, info = hf_export
    shards = shard_table(prepared_dir).to_pydict()
    export = read_export(out).to_pydict()
    assert len(export["input_ids"]) == len(shards["input_ids"]) == info["rows"] > 600
    for k in range(len(shards["input_ids"])):
        inputs, targets, mask = shards["input_ids"][k], shards["target_ids"][k], shards["loss_mask"][k]
        labels = export["labels"][k]
        assert labels[0] == -100
        assert labels[1:] == [t if m else -100 for t, m in zip(targets, mask, strict=True)]
        assert export["input_ids"][k] == [*inputs, targets[-1]]
        assert export["attention_mask"][k] == [1] * (len(inputs) + 1)
        assert export["position_ids"][k] == list(range(len(inputs) + 1))
    assert info["counted"] == sum(sum(m) for m in shards["loss_mask"])


def test_one_file_per_shard_in_order_with_an_info_file(prepared_dir, hf_export):
    out, _ = hf_export
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names == [f"train-{i:05d}-of-00004.parquet" for i in range(4)]
    recorded = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert [f["file"] for f in recorded["files"]] == names
    assert [f["rows"] for f in recorded["files"]] == [s.rows for s in ShardSet(prepared_dir).files]
    assert set(recorded["columns"]) == {"input_ids", "labels", "attention_mask", "position_ids"}


def test_packed_rows_keep_documents_apart(kit):
    docs = kit.random_documents(np.random.default_rng(3), 40)
    out = kit.write(docs, packed=True, pack_sizes=(3, 1, 4, 2)).parent / "hf"
    export_hf(ShardSet(out.parent / "shards"), out)
    export = read_export(out).to_pydict()
    assert "attention_mask" not in export  # an all-ones mask would merge the documents (see schemas/exports.py)
    d = 0
    for row_tokens, labels, positions, lengths in zip(
        export["input_ids"], export["labels"], export["position_ids"], export["seq_lengths"], strict=True
    ):
        assert sum(lengths) == len(row_tokens)
        at = 0
        for length in lengths:
            tokens, trainable = docs[d]
            assert row_tokens[at : at + length] == tokens.tolist()
            assert labels[at] == -100  # never predicted from the previous document
            assert labels[at + 1 : at + length] == [
                t if m else -100 for t, m in zip(tokens[1:], trainable[1:], strict=True)
            ]
            assert positions[at : at + length] == list(range(length))
            at += length
            d += 1
    assert d == len(docs)


def test_packed_export_equals_transformers_flattening_of_the_documents(kit, tmp_path):
    """Oracle: transformers' DataCollatorWithFlattening over the unpacked export of the same documents gives
    exactly the packed export's row (input_ids, labels with -100 at each document start, restarting positions)."""
    from transformers import DataCollatorWithFlattening

    docs = kit.random_documents(np.random.default_rng(4), 12)
    rows_dir = kit.write(docs)
    packed_dir = kit.write(docs, packed=True, pack_sizes=(12,))
    export_hf(ShardSet(rows_dir), tmp_path / "rows")
    export_hf(ShardSet(packed_dir), tmp_path / "packed")
    rows = read_export(tmp_path / "rows").to_pylist()
    packed = read_export(tmp_path / "packed").to_pylist()
    assert len(packed) == 1
    flattened = DataCollatorWithFlattening(return_tensors="np")(
        [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    )
    assert flattened["input_ids"][0].tolist() == packed[0]["input_ids"]
    assert flattened["labels"][0].tolist() == packed[0]["labels"]
    assert flattened["position_ids"][0].tolist() == packed[0]["position_ids"]


@pytest.mark.parametrize("file_format", ["parquet", "arrow"])
def test_datasets_loads_the_export_with_the_documented_features(prepared_dir, tmp_path, file_format):
    from datasets import Features, List, Value, load_dataset

    out = tmp_path / "hf"
    export_hf(ShardSet(prepared_dir), out, file_format=file_format)
    loaded = load_dataset(
        file_format, data_files=str(out / f"*.{file_format}"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert loaded.features == Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            "attention_mask": List(Value("int8")),
            "position_ids": List(Value("int32")),
        }
    )
    expected = read_export(out, file_format)
    assert loaded.num_rows == expected.num_rows
    assert loaded[7] == expected.slice(7, 1).to_pylist()[0]


def test_datasets_loads_the_folder_and_packed_features(kit, tmp_path):
    from datasets import Features, List, Value, load_dataset

    shards = kit.write(kit.random_documents(np.random.default_rng(5), 30), packed=True)
    export_hf(ShardSet(shards), tmp_path / "hf")
    loaded = load_dataset("parquet", data_dir=str(tmp_path / "hf"), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"]  # `train-*` files are the train split; `_export.json` is skipped
    assert loaded["train"].features == Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            "position_ids": List(Value("int32")),
            "seq_lengths": List(Value("int32")),
        }
    )


def test_the_documented_padded_recipe_gives_hf_aligned_batches(kit, prepared_dir, hf_export, tmp_path):
    """The README's HF Trainer collator (DataCollatorForSeq2Seq) on the export: after the model's own shift,
    exactly the shard's counted targets are scored."""
    from datasets import load_dataset
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    out, _ = hf_export
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(kit.tokenizer))
    train = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train", cache_dir=str(tmp_path))
    train = train.select_columns(["input_ids", "attention_mask", "labels"])
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="np")
    shards = shard_table(prepared_dir).slice(0, 8).to_pydict()
    batch = collator([train[k] for k in range(8)])
    scored = batch["labels"][:, 1:]  # what a causal LM compares with logits[:, :-1]
    for k in range(8):
        n = len(shards["target_ids"][k])
        expected = [t if m else -100 for t, m in zip(shards["target_ids"][k], shards["loss_mask"][k], strict=True)]
        assert scored[k, :n].tolist() == expected
        assert (scored[k, n:] == -100).all() and not batch["attention_mask"][k, n + 1 :].any()


def test_export_is_deterministic(prepared_dir, tmp_path):
    first = export_hf(ShardSet(prepared_dir), tmp_path / "a")
    second = export_hf(ShardSet(prepared_dir), tmp_path / "b")
    assert [f["sha256"] for f in first["files"]] == [f["sha256"] for f in second["files"]]


def test_export_refuses_the_shard_folder_and_changed_shards(kit, tmp_path):
    shards = kit.write(kit.random_documents(np.random.default_rng(6), 10))
    with pytest.raises(SetupError, match="shard folder itself"):
        export_hf(ShardSet(shards), shards)
    shard = next(shards.glob("shard-*.arrow"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    with pytest.raises(SetupError, match="does not match the sha256"):
        export_hf(ShardSet(shards), tmp_path / "out")


def test_reexport_replaces_only_its_own_files(kit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "train-00007-of-00009.parquet").write_text("stale")
    export_hf(ShardSet(kit.write(kit.random_documents(np.random.default_rng(7), 5))), out)
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_INFO_NAME, "notes.txt", "train-00000-of-00001.parquet"]
