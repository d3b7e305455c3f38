"""`lossmask export --to datatrove`, read back by datatrove's own code (dev extra): `DatatroveFolderDataset`
(what nanotron trains from), and the `load_doc_ends` / `get_data_reader` / `DocumentTokenizerMerger` that read
`.ds`, `.ds.index`, `.ds.loss` and `.ds.metadata` in datatrove's pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lossmask.export.datatrove import export_datatrove, si_token_count
from lossmask.loader.shards import ShardSet
from lossmask.schemas.exports import EXPORT_INFO_NAME

from .conftest import shard_documents

pytest.importorskip("datatrove", reason="datatrove is not installed: it is in the dev extra (pip install -e '.[dev]')")
from datatrove.pipeline.tokens.merger import DocumentTokenizerMerger, get_data_reader, load_doc_ends
from datatrove.utils.dataset import DatatroveFolderDataset


@pytest.fixture(scope="module", params=["rows", "packed"])
def exported(request, tmp_path_factory):
    shards_dir = request.getfixturevalue("packed_prepared_dir" if request.param == "packed" else "prepared_dir")
    out = tmp_path_factory.mktemp("datatrove") / "dt"
    info = export_datatrove(ShardSet(shards_dir), out)
    return shards_dir, out, info


def read_documents(out, name):
    """Documents and loss masks as datatrove's merger reads them: per document, from the .ds.index ends."""
    with (
        open(out / f"{name}.index", "rb") as index,
        open(out / name, "rb") as data,
        open(out / f"{name}.loss", "rb") as losses,
    ):
        ends = load_doc_ends(index)  # each reader closes the file it is given
        tokens = [np.frombuffer(b, dtype="<u2") for b in get_data_reader(data, ends, nb_bytes=2)]
        loss = [np.frombuffer(b, dtype=np.bool_) for b in get_data_reader(losses, ends)]
    return tokens, loss


def test_datatroves_readers_give_back_every_document_and_its_loss_mask(exported):
    shards_dir, out, info = exported
    names = sorted(p.name for p in out.glob("*.ds"))
    assert len(names) == len(ShardSet(shards_dir).files) > 1
    documents = []
    for name in names:
        tokens, loss = read_documents(out, name)
        documents += list(zip(tokens, loss, strict=True))
    expected = shard_documents(shards_dir)
    assert len(documents) == len(expected) == info["documents"]
    for (tokens, loss), (doc_tokens, counted) in zip(documents, expected, strict=True):
        assert tokens.tolist() == doc_tokens.tolist()
        assert loss.tolist() == counted.astype(bool).tolist()


def test_the_folder_dataset_reads_windows_with_positions_restarting_per_document(exported):
    """DatatroveFolderDataset (nanotron's reader), return_positions=True: windows of seq_len + 1 tokens in file
    order (a file's last partial window dropped), positions counting from 0 at each window start and again at
    every document end the .ds.index lists."""
    _, out, _ = exported
    seq_len = 31
    dataset = DatatroveFolderDataset(
        str(out), seq_len=seq_len, filename_pattern="*.ds", token_size=2, return_positions=True
    )
    windows, positions = [], []
    for name in sorted(p.name for p in out.glob("*.ds")):
        tokens, _ = read_documents(out, name)
        stream = np.concatenate(tokens)
        starts = np.zeros(stream.size, dtype=bool)
        starts[np.cumsum([t.size for t in tokens])[:-1]] = True  # where a document begins
        for a in range(0, stream.size - seq_len, seq_len + 1):
            windows.append(stream[a : a + seq_len + 1])
            begins = starts[a : a + seq_len + 1].copy()
            begins[0] = True
            run_start = np.maximum.accumulate(np.where(begins, np.arange(seq_len + 1), 0))
            positions.append(np.arange(seq_len + 1) - run_start)
    assert len(dataset) == len(windows) > 10
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["input_ids"].tolist() == windows[i].tolist()
        assert item["positions"].tolist() == positions[i].tolist()


def test_positions_from_eos_as_nanotron_asks_restart_after_each_eos_not_at_the_index_ends(exported):
    """nanotron's run_train.py gives the dataset the tokenizer's eos_token_id (positions_from_eos_token_id in
    datatrove 0.10.1): positions restart after every EOS. A ChatML document ends with `<|im_end|>` and a newline,
    so its newline starts the next document's positions; docs/export.md says so."""
    from tokenizers import Tokenizer

    from .conftest import TOKENIZER

    _, out, _ = exported
    eos = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json")).token_to_id("<|im_end|>")
    seq_len = 63
    by_index = DatatroveFolderDataset(str(out), seq_len, filename_pattern="*.ds", return_positions=True)
    by_eos = DatatroveFolderDataset(
        str(out), seq_len, filename_pattern="*.ds", return_positions=True, positions_from_eos_token_id=eos
    )
    differ = 0
    for i in range(len(by_index)):
        tokens = by_index[i]["input_ids"]
        positions = by_eos[i]["positions"].tolist()
        restarts = [0, *(k + 1 for k in range(seq_len) if tokens[k] == eos)]
        assert [k for k, p in enumerate(positions) if p == 0] == restarts
        differ += positions != by_index[i]["positions"].tolist()
    assert differ > len(by_index) // 2


def test_metadata_and_the_merger(exported, tmp_path):
    """.ds.metadata is 'tokenizer|token_size', the count and its SI form; datatrove's merger reads the folder
    (tokenizer and token size from the metadata, documents from the index, loss from .ds.loss) into one file."""
    shards_dir, out, _ = exported
    first = sorted(out.glob("*.ds"))[0]
    lines = (out / f"{first.name}.metadata").read_text().split("\n")
    tokens = first.stat().st_size // 2
    assert lines == [f"{ShardSet(shards_dir).tokenizer_path}|2", str(tokens), si_token_count(tokens)]
    merged = tmp_path / "merged"
    DocumentTokenizerMerger(str(out), str(merged), "all", save_loss_metadata=True, shuffle=False).run()
    tokens, loss = read_documents(merged, "000_all.ds")
    expected = shard_documents(shards_dir)
    assert [t.tolist() for t in tokens] == [t.tolist() for t, _ in expected]
    assert [m.tolist() for m in loss] == [c.astype(bool).tolist() for _, c in expected]
    assert (merged / "000_all.ds.metadata").read_text().split("\n")[0] == f"{ShardSet(shards_dir).tokenizer_path}|2"
    sidecar = json.loads((out / EXPORT_INFO_NAME).read_text())
    assert sidecar["source"]["manifest_sha256"] and sidecar["documents"] == len(expected)


def test_si_counts_match_humanize():
    humanize = pytest.importorskip("humanize", reason="humanize comes with datatrove")
    for value in [0, 1, 9, 10, 999, 1000, 1234, 9995, 99_949, 99_950, 999_499, 999_500, 999_999, 10**6, 10**12 - 1]:
        assert si_token_count(value) == humanize.metric(value, unit="T"), value


def test_the_documented_nanotron_data_stage_reads_the_export(prepared_dir, tmp_path, monkeypatch):
    """docs/export.md's nanotron YAML, loaded, and the DatatroveFolderDataset it configures (what nanotron's
    `build_dataset` makes of `dataset_folder`, `token_size_in_bytes`, `return_positions`, `sequence_length`)."""
    import re
    from pathlib import Path

    import yaml

    docs = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL) if "data_stages" in b)
    config = yaml.safe_load(block)
    dataset_args = config["data_stages"][0]["data"]["dataset"]
    monkeypatch.chdir(tmp_path)
    export_datatrove(ShardSet(prepared_dir), dataset_args["dataset_folder"])
    sidecar = json.loads((tmp_path / dataset_args["dataset_folder"] / EXPORT_INFO_NAME).read_text())
    assert dataset_args["token_size_in_bytes"] == sidecar["token_size"]
    seq_len = config["tokens"]["sequence_length"]
    dataset = DatatroveFolderDataset(
        dataset_args["dataset_folder"],
        seq_len=seq_len,
        filename_pattern="*.ds",
        recursive=False,
        token_size=dataset_args["token_size_in_bytes"],
        return_positions=dataset_args["return_positions"],
    )
    stream = np.concatenate([t for t, _ in shard_documents(prepared_dir)])
    assert len(dataset) >= 1 and dataset[0]["input_ids"].tolist() == stream[: seq_len + 1].tolist()


@pytest.mark.parametrize("packed", [False, True])
def test_files_of_many_record_batches_keep_cumulative_ends(kit, tmp_path, packed):
    """Shards of several record batches each (16 rows a batch): `.ds.index` ends count on across batches within
    a file, one file set per shard named `{shard:05d}_lossmask.ds`, and datatrove's readers give back every
    document and mask."""
    docs = kit.random_documents(np.random.default_rng(11), 160)
    shards_dir = kit.write(docs, packed=packed, rows_per_shard=50, batch_rows=16)
    out = tmp_path / "dt"
    export_datatrove(ShardSet(shards_dir), out)
    names = sorted(p.name for p in out.glob("*.ds"))
    assert names == [f"{k:05d}_lossmask.ds" for k in range(len(ShardSet(shards_dir).files))]
    read = []
    for name in names:
        tokens, loss = read_documents(out, name)
        read += [(t.tolist(), m.tolist()) for t, m in zip(tokens, loss, strict=True)]
    assert read == [(t.tolist(), [False, *m[1:].astype(bool).tolist()]) for t, m in docs]
