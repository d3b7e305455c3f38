"""`lossmask export --to numpy`: flat memmaps that read back to the shard contents exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from lossmask.errors import SetupError
from lossmask.export.memmap import MemmapExport, export_memmap
from lossmask.loader.shards import ShardSet


def assert_reads_back(shards_dir, out, packed: bool) -> None:
    table = ds.dataset(str(shards_dir), format="arrow").to_table().to_pydict()
    data = MemmapExport(out)
    assert data.num_rows == len(table["input_ids"])
    record_index = np.asarray(data.arrays["record_index"])
    for r in range(data.num_rows):
        row = data.row(r)
        for column in ("input_ids", "target_ids", "loss_mask", "position_ids"):
            assert row[column].tolist() == table[column][r], (r, column)
        if packed:
            assert row["segment_ids"].tolist() == table["segment_ids"][r]
        docs = slice(int(data.row_offsets[r]), int(data.row_offsets[r + 1]))
        expected = table["record_index"][r] if packed else [table["record_index"][r]]
        assert record_index[docs].tolist() == expected


def test_prepared_shards_read_back_exactly(prepared_dir, tmp_path):
    header = export_memmap(ShardSet(prepared_dir), tmp_path / "np")
    assert_reads_back(prepared_dir, tmp_path / "np", packed=False)
    manifest = ShardSet(prepared_dir).manifest
    counts = header["counts"]
    assert counts["rows"] == counts["documents"] == manifest["totals"]["rows"]
    assert counts["tokens"] == manifest["totals"]["tokens"] + counts["documents"]  # each document gets its last token
    assert counts["loss_tokens"] == manifest["totals"]["loss_tokens"]
    assert header["arrays"]["tokens"]["dtype"] == "<u2"  # vocab 1024 fits in 16 bits


@pytest.mark.parametrize("packed", [False, True])
def test_synthetic_shards_read_back_exactly(kit, tmp_path, packed):
    shards = kit.write(kit.random_documents(np.random.default_rng(11), 60), packed=packed, rows_per_shard=7)
    export_memmap(ShardSet(shards), tmp_path / "np")
    assert_reads_back(shards, tmp_path / "np", packed)


def test_flat_arrays_follow_the_header(kit, tmp_path):
    """What a Megatron- or OLMo-style reader relies on, read with np.fromfile and the header alone."""
    docs = kit.random_documents(np.random.default_rng(12), 25)
    shards = kit.write(docs, packed=True)
    export_memmap(ShardSet(shards), tmp_path / "np")
    header = json.loads((tmp_path / "np" / "header.json").read_text())

    def array(name):
        spec = header["arrays"][name]
        values = np.fromfile(tmp_path / "np" / spec["file"], dtype=np.dtype(spec["dtype"]))
        assert values.size == spec["count"]
        return values

    tokens, mask, offsets = array("tokens"), array("loss_mask"), array("doc_offsets")
    assert offsets[0] == 0 and offsets[-1] == tokens.size
    for k, (doc_tokens, trainable) in enumerate(docs):
        a, b = offsets[k], offsets[k + 1]
        assert tokens[a:b].tolist() == doc_tokens.tolist()
        assert mask[a:b].tolist() == [0, *trainable[1:].tolist()]  # a document start never counts
    assert header["counts"]["documents"] == len(docs)


def test_large_vocabularies_take_32_bit_tokens(kit, tmp_path):
    docs = kit.random_documents(np.random.default_rng(13), 10, vocab=150_000)
    shards = kit.write(docs, vocab_size=150_000)
    header = export_memmap(ShardSet(shards), tmp_path / "np")
    assert header["arrays"]["tokens"]["dtype"] == "<u4"
    assert_reads_back(shards, tmp_path / "np", packed=False)


def test_a_vocab_size_too_small_for_the_ids_is_refused(kit, tmp_path):
    shards = kit.write(kit.random_documents(np.random.default_rng(14), 10, vocab=100_000), vocab_size=1024)
    with pytest.raises(SetupError, match="does not fit"):
        export_memmap(ShardSet(shards), tmp_path / "np")


def test_an_empty_shard_set_gives_empty_arrays(kit, tmp_path):
    shards = kit.write([])
    export_memmap(ShardSet(shards), tmp_path / "np")
    data = MemmapExport(tmp_path / "np")
    assert data.num_rows == data.num_documents == 0 and data.tokens.size == 0


def test_a_truncated_file_is_caught_on_open(kit, tmp_path):
    export_memmap(ShardSet(kit.write(kit.random_documents(np.random.default_rng(15), 5))), tmp_path / "np")
    tokens = tmp_path / "np" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(SetupError, match=r"tokens\.bin holds"):
        MemmapExport(tmp_path / "np")


def test_the_documented_reading_snippet_runs(prepared_dir, tmp_path, monkeypatch):
    """docs/export.md's memmap snippet, run as written on a real export."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", docs, re.DOTALL) if "np/header.json" in block)
    export_memmap(ShardSet(prepared_dir), tmp_path / "np")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)
    a, length, weight = scope["a"], scope["L"], scope["weight"]
    assert scope["x"].size == scope["y"].size == weight.size == length
    starts = set(scope["doc_offsets"].tolist())
    inside = [j for j in range(length) if a + 1 + j in starts]
    assert inside and not weight[inside].any()  # the window crosses documents, and no jump between them counts
