"""`lossmask export --to olmo-core`, read back by OLMo-core's own numpy datasets (ai2-olmo-core, dev extra).

The layout is open-instruct's (`open_instruct/numpy_dataset_conversion.py`); the readers are OLMo-core's
`NumpyPaddedFSLDataset` (one instance per document), `NumpyPackedFSLDataset` (documents packed by OBFD) and
`NumpyFSLDataset` (fixed windows), built from their configs with `label_mask_paths`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lossmask.export.olmo_core import export_olmo_core, olmo_token_dtype
from lossmask.loader.shards import ShardSet
from tokenizers import Tokenizer

from .conftest import shard_documents

olmo_data = pytest.importorskip(
    "olmo_core.data", reason="ai2-olmo-core is not installed: it is in the dev extra (pip install -e '.[dev]')"
)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"


@pytest.fixture(autouse=True)
def boundaries_from_metadata(monkeypatch):
    """OLMo-core finds documents by scanning for EOS in local arrays unless told to read the .csv.gz files;
    lossmask documents need not end with EOS (a template's newline after it), so the docs say to set this."""
    monkeypatch.setenv("OLMO_DATA_PREP_USE_ARRAY_IF_LOCAL", "metadata")
    monkeypatch.setenv("OLMO_DATA_PREP_WORKERS", "1")


def tokenizer_config(out: Path):
    tokenizer = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    return olmo_data.TokenizerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
    )


def dataset_paths(out: Path) -> dict:
    return {
        "paths": [str(out / "token_ids_part_*.npy")],
        "label_mask_paths": [str(out / "labels_mask_part_*.npy")],
        "expand_glob": True,
        "work_dir": str(out.parent / f"{out.name}-work"),
    }


def as_tuples(docs) -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    return [(tuple(int(t) for t in tokens), tuple(bool(m) for m in mask)) for tokens, mask in docs]


@pytest.mark.parametrize("packed", [False, True])
def test_padded_dataset_reads_every_document_and_mask(request, tmp_path, packed):
    """NumpyPaddedFSLDataset: instance i is document i of the shards, its label_mask the counted targets."""
    shards_dir = request.getfixturevalue("packed_prepared_dir" if packed else "prepared_dir")
    out = tmp_path / "olmo"
    export_olmo_core(ShardSet(shards_dir), out, max_part_bytes=16_000)  # several parts: documents never split
    expected = shard_documents(shards_dir)
    longest = max(tokens.size for tokens, _ in expected)
    config = olmo_data.NumpyPaddedFSLDatasetConfig(
        tokenizer=tokenizer_config(out), sequence_length=longest, **dataset_paths(out)
    )
    dataset = config.build()
    dataset.prepare()
    assert len(dataset) == len(expected)
    pad = config.tokenizer.pad_token_id
    for i, (tokens, counted) in enumerate(expected):
        item = dataset[i]
        n = tokens.size
        assert item["input_ids"][:n].tolist() == tokens.tolist(), i
        assert item["label_mask"][:n].tolist() == counted.astype(bool).tolist(), i
        assert (item["input_ids"][n:] == pad).all() and not item["label_mask"][n:].any()


def split_into_documents(tokens: list[int], mask: list[bool], remaining: Counter) -> list:
    """`tokens` as a sequence of whole documents from `remaining` (then padding only), by backtracking over the
    document lengths; the documents used are taken out of `remaining`."""
    lengths = sorted({len(doc[0]) for doc in remaining if remaining[doc]}, reverse=True)

    def solve(at: int) -> list | None:
        if not any(mask[at:]) and (at == len(tokens) or all(t == tokens[-1] for t in tokens[at:])):
            return []
        for length in lengths:
            doc = (tuple(tokens[at : at + length]), tuple(mask[at : at + length]))
            if remaining.get(doc):
                remaining[doc] -= 1
                rest = solve(at + length)
                if rest is not None:
                    return [doc, *rest]
                remaining[doc] += 1
        return None

    found = solve(0)
    assert found is not None, "an instance is not whole documents followed by padding"
    return found


def test_packed_dataset_packs_the_documents_whole_and_masks_them(packed_prepared_dir, tmp_path):
    """NumpyPackedFSLDataset (OBFD): every instance is whole documents with their masks, then padding, and
    every document is in exactly one instance; a document's first token never counts, so no target spans two."""
    out = tmp_path / "olmo"
    export_olmo_core(ShardSet(packed_prepared_dir), out)
    config = olmo_data.NumpyPackedFSLDatasetConfig(
        tokenizer=tokenizer_config(out), sequence_length=512, use_array_if_local=False, **dataset_paths(out)
    )
    dataset = config.build()
    dataset.prepare()
    remaining = Counter(as_tuples(shard_documents(packed_prepared_dir)))
    for i in range(len(dataset)):
        item = dataset[i]
        split_into_documents(item["input_ids"].tolist(), item["label_mask"].tolist(), remaining)
    assert sum(remaining.values()) == 0


def test_fixed_windows_concatenate_to_the_token_stream(prepared_dir, tmp_path):
    """NumpyFSLDataset: consecutive windows of the concatenated documents, masks alongside."""
    out = tmp_path / "olmo"
    export_olmo_core(ShardSet(prepared_dir), out)
    config = olmo_data.NumpyFSLDatasetConfig(tokenizer=tokenizer_config(out), sequence_length=64, **dataset_paths(out))
    dataset = config.build()
    dataset.prepare()
    expected = shard_documents(prepared_dir)
    stream = np.concatenate([t for t, _ in expected])
    mask = np.concatenate([m for _, m in expected]).astype(bool)
    windows = [dataset[i] for i in range(len(dataset))]
    read = np.concatenate([w["input_ids"].numpy() for w in windows])
    assert len(windows) > 100 and read.tolist() == stream[: read.size].tolist()
    assert np.concatenate([w["label_mask"].numpy() for w in windows]).tolist() == mask[: read.size].tolist()


def test_files_are_open_instructs_layout(prepared_dir, tmp_path):
    """Raw headerless memmaps named token_ids_part_XXXX.npy / labels_mask_part_XXXX.npy, the smallest dtype for
    the vocabulary, 'start,end' lines in token_ids_part_XXXX.csv.gz, a tokenizer/ folder and the statistics."""
    out = tmp_path / "olmo"
    stats = export_olmo_core(ShardSet(prepared_dir), out, max_part_bytes=20_000)
    names = sorted(p.name for p in out.iterdir())
    parts = len(stats["lossmask"]["parts"])
    assert parts > 1
    assert names == sorted(
        [
            "dataset_statistics.json",
            "tokenizer",
            *(f"token_ids_part_{k:04d}.{ext}" for k in range(parts) for ext in ("npy", "csv.gz")),
            *(f"labels_mask_part_{k:04d}.npy" for k in range(parts)),
        ]
    )
    assert olmo_token_dtype(1024) == np.uint16 and olmo_token_dtype(256) == np.uint8
    assert olmo_token_dtype(65536) == np.uint16 and olmo_token_dtype(65537) == np.uint32
    expected = iter(shard_documents(prepared_dir))
    for k in range(parts):
        tokens = np.fromfile(out / f"token_ids_part_{k:04d}.npy", dtype="<u2")
        mask = np.fromfile(out / f"labels_mask_part_{k:04d}.npy", dtype=np.bool_)
        assert (out / f"token_ids_part_{k:04d}.npy").read_bytes()[:6] != b"\x93NUMPY"
        assert tokens.size == mask.size
        lines = gzip.decompress((out / f"token_ids_part_{k:04d}.csv.gz").read_bytes()).decode().splitlines()
        at = 0
        for line in lines:
            start, end = map(int, line.split(","))
            assert start == at
            doc_tokens, counted = next(expected)
            assert tokens[start:end].tolist() == doc_tokens.tolist()
            assert mask[start:end].tolist() == counted.astype(bool).tolist()
            at = end
        assert at == tokens.size
        # a part stops before the document that would cross the limit (a lone longer document excepted)
        assert tokens.nbytes <= 20_000 or len(lines) == 1
    assert next(expected, None) is None
    on_disk = json.loads((out / "dataset_statistics.json").read_text())
    docs = shard_documents(prepared_dir)
    overall = on_disk["overall_statistics"]
    assert overall["total_instances"] == ShardSet(prepared_dir).manifest["totals"]["rows"] == len(docs)
    assert overall["total_tokens"] == sum(t.size for t, _ in docs)
    assert overall["trainable_tokens"] == sum(int(m.sum()) for _, m in docs)
    assert overall["instances_filtered"] == sum(1 for _, m in docs if not m.any())
    assert on_disk["lossmask"]["source"]["manifest_sha256"]


def test_the_documented_olmo_core_config_runs(packed_prepared_dir, tmp_path, monkeypatch):
    """docs/export.md's OLMo-core block, run as written on an export in `olmo/`."""
    snippet = next(
        block
        for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
        if "NumpyPaddedFSLDatasetConfig" in block
    )
    export_olmo_core(ShardSet(packed_prepared_dir), tmp_path / "olmo")
    monkeypatch.chdir(tmp_path)
    # OLMo-core's own default; the snippet sets "metadata" itself, and monkeypatch puts the variable back after
    monkeypatch.setenv("OLMO_DATA_PREP_USE_ARRAY_IF_LOCAL", "auto")
    scope: dict = {}
    exec(snippet, scope)
    dataset = scope["dataset"]
    expected = shard_documents(packed_prepared_dir)
    assert len(dataset) == len(expected)
    for i, (tokens, counted) in enumerate(expected):  # OLMo-core's own label_mask, not one it made up (pads)
        item = dataset[i]
        assert item["input_ids"][: tokens.size].tolist() == tokens.tolist(), i
        assert item["label_mask"].tolist() == [*counted.astype(bool).tolist(), *[False] * (1024 - tokens.size)], i


def test_statistics_count_documents_without_a_counted_target(kit, tmp_path):
    """open-instruct's `instances_filtered`: documents whose mask is all 0 (its trainer skips them)."""
    rng = np.random.default_rng(5)
    docs = kit.random_documents(rng, 30)
    for k in (3, 17):
        docs[k] = (docs[k][0], np.zeros_like(docs[k][1]))
    stats = export_olmo_core(ShardSet(kit.write(docs, rows_per_shard=10)), tmp_path / "olmo")["overall_statistics"]
    assert stats["instances_filtered"] == sum(1 for _, m in docs if not m[1:].any())
    assert stats["total_instances"] == 30
