"""`lossmask export --to megatron-bridge`: packed SFT Parquet for Megatron-Bridge.

Megatron-Bridge cannot be installed here (it requires transformer-engine, megatron-core, mamba-ssm: a CUDA
stack), so its reader is not run: the test reads the files by a spec written from its source,
NVIDIA-NeMo/Megatron-Bridge `src/megatron/bridge/data/datasets/packed_parquet.py`
(`GPTSFTPackedParquetDataset`: REQUIRED_COLUMNS, `validate_row`, `__getitem__`) and `sft.py`
(`GPTSFTPackedDataset.collate_fn`, `_build_loss_mask` with answer_only_loss), and `packing_utils.py`
(`create_packing_strategy`'s metadata). The collated batch Megatron-Bridge would build from each row must equal
the shard row itself: its tokens, labels, loss mask and positions are the shifted columns lossmask wrote.
"""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from lossmask.export.megatron_bridge import export_megatron_bridge
from lossmask.loader.shards import ShardSet


def collate(input_ids: list[int], loss_mask: list[int], seq_start_id: list[int]) -> dict[str, list[int]]:
    """One row as Megatron-Bridge's packed collate_fn makes it (answer_only_loss): each document cut at
    seq_start_id + [len], tokens d[:-1], labels d[1:], loss_mask[start:end - 1], positions 0..len - 2."""
    bounds = [*seq_start_id, len(input_ids)]
    out: dict[str, list[int]] = {"tokens": [], "labels": [], "loss_mask": [], "position_ids": [], "cu_seqlens": [0]}
    for start, end in itertools.pairwise(bounds):
        out["tokens"] += input_ids[start : end - 1]
        out["labels"] += input_ids[start + 1 : end]
        out["loss_mask"] += loss_mask[start : end - 1]
        out["position_ids"] += list(range(end - start - 1))
        out["cu_seqlens"].append(out["cu_seqlens"][-1] + end - start - 1)
    return out


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
                batch = collate(input_ids, mask, starts)
                assert batch["tokens"] == shard["input_ids"][r]
                assert batch["labels"] == shard["target_ids"][r]
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


def test_megatron_bridge_itself_cannot_be_installed_here():
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.bridge") is None:
        pytest.skip(
            "megatron-bridge needs transformer-engine, megatron-core and mamba-ssm (a CUDA stack): its reader "
            "is replaced here by the spec from its source (this module's docstring)"
        )
    from megatron.bridge.data.datasets.packed_parquet import REQUIRED_COLUMNS

    assert {"input_ids", "loss_mask", "seq_start_id"} == REQUIRED_COLUMNS
