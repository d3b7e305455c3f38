"""`lossmask export --to megatron-bridge`: packed SFT Parquet for Megatron-Bridge.

Two proofs. (1) A spec written from Megatron-Bridge 0.6.2's source, which always runs:
`megatron/bridge/data/packing/parquet.py` (`GPTSFTPackedParquetDataset`: REQUIRED_COLUMNS, `validate_row`,
`__getitem__`), `packing/gpt_sft.py` (`GPTSFTPackedDataset.collate_fn`, `_build_loss_mask` with
answer_only_loss, and the loss mask zeroed wherever the input token is the tokenizer's EOS) and
`packing/algorithms.py` (`create_packing_strategy`'s metadata). The collated batch Megatron-Bridge would build
from each row must equal the shard row itself: its tokens, labels, loss mask and positions are the shifted columns
lossmask wrote. (2) Megatron-Bridge 0.6.2's own code: docs/export.md's `GPTSFTDatasetConfig`, built by its
`GPTSFTDatasetBuilder` into its `GPTSFTPackedParquetDataset`, collated by its `collate_fn`. pip cannot install
megatron-bridge here (Python >=3.12 only, and a CUDA stack), so that test runs from an unpacked wheel named by
LOSSMASK_MEGATRON_BRIDGE_SRC and skips without it (tests/consumers/foreign_readers.py says how).
"""

from __future__ import annotations

import itertools
import json
import re
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from lossmask.export.megatron_bridge import export_megatron_bridge
from lossmask.loader.shards import ShardSet
from tokenizers import Tokenizer

from .conftest import TOKENIZER
from .foreign_readers import MEGATRON_BRIDGE_ENV, MEGATRON_BRIDGE_VERSION, source_folder
from .foreign_readers import megatron_bridge as foreign_megatron_bridge

DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def collate(
    input_ids: list[int], loss_mask: list[int], seq_start_id: list[int], eos_id: int | None = None
) -> dict[str, list[int]]:
    """One row as Megatron-Bridge's packed collate_fn makes it (answer_only_loss): each document cut at
    seq_start_id + [len], tokens d[:-1], labels d[1:], loss_mask[start:end - 1], positions 0..len - 2; then
    `loss_mask[tokens == eos_id] = 0` (it drops the target after every EOS input)."""
    bounds = [*seq_start_id, len(input_ids)]
    out: dict[str, list[int]] = {"tokens": [], "labels": [], "loss_mask": [], "position_ids": [], "cu_seqlens": [0]}
    for start, end in itertools.pairwise(bounds):
        out["tokens"] += input_ids[start : end - 1]
        out["labels"] += input_ids[start + 1 : end]
        out["loss_mask"] += loss_mask[start : end - 1]
        out["position_ids"] += list(range(end - start - 1))
        out["cu_seqlens"].append(out["cu_seqlens"][-1] + end - start - 1)
    out["loss_mask"] = [0 if t == eos_id else m for t, m in zip(out["tokens"], out["loss_mask"], strict=True)]
    return out


def eos_id() -> int:
    """The fixture tokenizer's EOS (`tokenizer_config.json` eos_token), what Megatron-Bridge's tokenizer gives."""
    return Tokenizer.from_file(str(TOKENIZER / "tokenizer.json")).token_to_id("<|im_end|>")


def validate_row(input_ids, loss_mask, seq_start_id) -> None:
    """GPTSFTPackedParquetDataset.validate_row's invariants."""
    assert len(loss_mask) == len(input_ids)
    assert seq_start_id and seq_start_id[0] == 0
    assert all(s < len(input_ids) for s in seq_start_id)
    assert seq_start_id == sorted(seq_start_id)


@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_megatron_bridges_collation_of_each_row_is_the_shard_row(request, tmp_path, layout):
    shards_dir = request.getfixturevalue("packed_prepared_dir" if layout == "packed" else "prepared_dir")
    out = tmp_path / "mb"
    info = export_megatron_bridge(ShardSet(shards_dir), out)
    files = sorted(out.glob("*.idx.parquet"))  # the directory/glob spec Megatron-Bridge resolves, sorted
    assert [f.name for f in files] == [f["file"] for f in info["files"]]
    assert len(files) == len(ShardSet(shards_dir).files)
    shard = ds.dataset(str(shards_dir), format="arrow").to_table().to_pydict()
    eos = eos_id()
    r = 0
    for path in files:
        schema = pq.read_schema(path)
        assert schema.field("input_ids").type == pa.list_(pa.int32())
        assert schema.field("loss_mask").type == pa.list_(pa.int8())
        assert schema.field("seq_start_id").type == pa.list_(pa.int32())
        assert json.loads(schema.metadata[b"lossmask.source"])["manifest_sha256"]
        parquet = pq.ParquetFile(path)
        assert all(parquet.metadata.row_group(g).num_rows <= 500 for g in range(parquet.metadata.num_row_groups))
        for g in range(parquet.metadata.num_row_groups):  # read per row group, as its __getitem__ does
            group = parquet.read_row_group(g, columns=["input_ids", "seq_start_id", "loss_mask"]).to_pydict()
            rows = zip(group["input_ids"], group["seq_start_id"], group["loss_mask"], strict=True)
            for input_ids, starts, mask in rows:
                validate_row(input_ids, mask, starts)
                batch = collate(input_ids, mask, starts, eos)
                assert batch["tokens"] == shard["input_ids"][r]
                assert batch["labels"] == shard["target_ids"][r]
                # the fixtures never count the target after an EOS (the template's newline): nothing is dropped
                assert batch["loss_mask"] == shard["loss_mask"][r]
                assert batch["position_ids"] == shard["position_ids"][r]
                if layout == "packed":
                    segments = np.asarray(shard["segment_ids"][r])
                    assert batch["cu_seqlens"][1:-1] == (np.flatnonzero(np.diff(segments)) + 1).tolist()
                r += 1
    assert r == len(shard["input_ids"])


def test_packing_metadata_is_create_packing_strategys(packed_prepared_dir, tmp_path):
    out = tmp_path / "mb"
    export_megatron_bridge(ShardSet(packed_prepared_dir), out)
    (metadata,) = json.loads((out / "packing_metadata.json").read_text())
    shard = ds.dataset(str(packed_prepared_dir), format="arrow").to_table().to_pydict()
    doc_lengths = [int(c) for s in shard["segment_ids"] for c in np.bincount(s)]  # positions per document
    row_positions = [len(row) for row in shard["input_ids"]]
    assert metadata == {
        "dataset_max_seqlen": max(doc_lengths),
        "max_samples_per_bin": max(max(s) + 1 for s in shard["segment_ids"]),
        "packing_factor": round(len(doc_lengths) / len(row_positions), 2),
        "packing_efficiency": round(sum(row_positions) / len(row_positions) / 256 * 100, 2),
        "pack_size": 256,
        "min_packed_seqlen": min(row_positions),
    }


def test_row_groups_hold_500_rows_as_write_packed_parquet_writes_them(kit, tmp_path):
    """A shard of 1,200 rows read in record batches of 700: row groups of at most 500 rows, as many as 500 can."""
    docs = kit.random_documents(np.random.default_rng(3), 1200, max_len=6)
    shards_dir = kit.write(docs, rows_per_shard=1200, batch_rows=700)
    export_megatron_bridge(ShardSet(shards_dir), tmp_path / "mb")
    (path,) = sorted((tmp_path / "mb").glob("*.idx.parquet"))
    metadata = pq.ParquetFile(path).metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    assert sizes == [500, 200, 500] and metadata.num_rows == 1200


def test_the_spec_drops_the_target_after_an_eos_input_as_megatron_bridge_does():
    """A counted target right after EOS is not trained by Megatron-Bridge (docs/export.md says so)."""
    batch = collate([5, 2, 7, 8], [0, 1, 1, 0], [0], eos_id=2)
    assert batch["tokens"] == [5, 2, 7] and batch["loss_mask"] == [0, 0, 1]


@pytest.fixture(scope="module")
def megatron_bridge():
    src = source_folder(MEGATRON_BRIDGE_ENV, "megatron/bridge/data/packing/parquet.py")
    if src is None:
        pytest.skip(
            f"megatron-bridge {MEGATRON_BRIDGE_VERSION} does not install here (Python >=3.12 only; a CUDA stack): "
            f"set {MEGATRON_BRIDGE_ENV} to its unpacked wheel to run its own reader (tests/consumers/"
            "foreign_readers.py); the spec tests above run without it"
        )
    with foreign_megatron_bridge(src) as modules:
        yield modules


@pytest.mark.parametrize("layout", ["rows", "packed"])
def test_megatron_bridges_own_builder_and_collate_fn_read_the_shard_rows(
    request, tmp_path, monkeypatch, megatron_bridge, layout
):
    """docs/export.md's GPTSFTDatasetConfig, run as written on an export in `mb/`, built by Megatron-Bridge's own
    GPTSFTDatasetBuilder; its GPTSFTPackedParquetDataset and collate_fn give back every shard row."""
    shards_dir = request.getfixturevalue("packed_prepared_dir" if layout == "packed" else "prepared_dir")
    snippet = next(
        block
        for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
        if "GPTSFTDatasetConfig" in block
    )
    monkeypatch.chdir(tmp_path)
    export_megatron_bridge(ShardSet(shards_dir), "mb")
    scope: dict = {}
    exec(snippet, scope)
    eos = eos_id()
    tokenizer = types.SimpleNamespace(eos_id=eos, bos_id=None, pad_id=eos)
    train, valid, test = megatron_bridge.builders.GPTSFTDatasetBuilder(scope["dataset"], tokenizer).build()
    assert isinstance(train, megatron_bridge.parquet.GPTSFTPackedParquetDataset) and valid is None and test is None
    shard = ds.dataset(str(shards_dir), format="arrow").to_table().to_pydict()
    assert len(train) == len(shard["input_ids"])
    for start in range(0, len(train), 8):
        rows = list(range(start, min(start + 8, len(train))))
        batch = train.collate_fn([train[r] for r in rows])
        for k, r in enumerate(rows):
            n = len(shard["input_ids"][r])
            assert batch["tokens"][k, :n].tolist() == shard["input_ids"][r], r
            assert batch["labels"][k, :n].tolist() == shard["target_ids"][r], r
            assert batch["loss_mask"][k, :n].tolist() == shard["loss_mask"][r], r
            assert not batch["loss_mask"][k, n:].any(), r
            assert batch["position_ids"][k, :n].tolist() == shard["position_ids"][r], r
            segments = np.asarray(shard["segment_ids"][r]) if layout == "packed" else np.zeros(n, dtype=int)
            ends = [*(np.flatnonzero(np.diff(segments)) + 1).tolist(), n]
            cu_seqlens = batch["cu_seqlens_q"][k].tolist()
            assert cu_seqlens[: len(ends) + 1] == [0, *ends], r
