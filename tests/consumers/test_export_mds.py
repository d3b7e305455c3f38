"""`lossmask export --to mds`: MosaicML Streaming shards of llm-foundry finetuning samples.

Three proofs. (1) A byte-level reader written here from the spec in mosaicml/streaming 0.13
(`streaming/base/format/mds/writer.py` `encode_sample` / `encode_joint_shard`, `base/writer.py` `flush_shard` /
`_write_index`, `mds/encodings.py` `JSON`): always runs. (2) MosaicML's own `StreamingDataset`, and `MDSWriter`
writing the same samples byte for byte. mosaicml-streaming 0.13 pins numpy<2.2 and transformers<5, which the
dev extra's numpy 2 and transformers 5 exclude, so it is not in the dev extra: the Makefile installs it without
its pins into `.venv/mds-reader` (MDS_READER), which this module appends to sys.path, after site-packages.
(3) llm-foundry 0.22.0's own finetuning collator over what StreamingDataset reads, with docs/export.md's
`train_loader` settings. llm-foundry pins torch 2.7.0 and transformers <4.52, so it does not install here: that
test runs from an unpacked wheel named by LOSSMASK_LLM_FOUNDRY_SRC and skips without it
(tests/consumers/foreign_readers.py says how).
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from lossmask.export.mds import batch_turns, document_turns, export_mds
from lossmask.loader.shards import ShardSet
from lossmask.schemas.exports import EXPORT_INFO_NAME

from .conftest import TOKENIZER, shard_documents
from .foreign_readers import LLM_FOUNDRY_ENV, LLM_FOUNDRY_VERSION, source_folder
from .foreign_readers import llm_foundry as foreign_llm_foundry

STREAMING_MISSING = (
    "mosaicml-streaming is not installed: `make test` puts it in .venv/mds-reader (its pins conflict with the dev "
    "extra, see this module's docstring)"
)
MDS_READER = Path(sys.prefix) / "mds-reader"


def parse_mds(directory) -> list[dict]:
    """Every sample of an MDS dataset, by the byte layout alone."""
    index = json.loads((directory / "index.json").read_text())
    assert index["version"] == 2
    samples = []
    for shard in index["shards"]:
        data = (directory / shard["raw_data"]["basename"]).read_bytes()
        assert len(data) == shard["raw_data"]["bytes"] and shard["format"] == "mds" and shard["zip_data"] is None
        count = int(np.frombuffer(data[:4], "<u4")[0])
        assert count == shard["samples"]
        offsets = np.frombuffer(data[4 : 4 + 4 * (count + 1)], "<u4")
        config = json.loads(data[4 + 4 * (count + 1) : offsets[0]])
        assert config == {k: v for k, v in shard.items() if k not in ("samples", "raw_data", "zip_data")}
        assert offsets[-1] == len(data)
        names, encodings = config["column_names"], config["column_encodings"]
        for k in range(count):
            sample = data[offsets[k] : offsets[k + 1]]
            sizes = np.frombuffer(sample[: 4 * len(names)], "<u4")  # every column is variable-size (json)
            at = 4 * len(names)
            row = {}
            for name, encoding, size in zip(names, encodings, sizes, strict=True):
                assert encoding == "json"
                row[name] = json.loads(sample[at : at + size].decode("utf-8"))
                at += size
            samples.append(row)
    return samples


def foundry_stitch(turns) -> tuple[list[int], list[int]]:
    """llm-foundry's decoder-only stitching with target_prompts='none', target_responses='all'
    (`llmfoundry/data/finetuning/collator.py` `stitch_turns_decoder_only`): each turn's input_ids untrained,
    then its labels trained; HF labels (-100 = not a target)."""
    input_ids, labels = [], []
    for turn in turns:
        input_ids += turn["input_ids"] + turn["labels"]
        labels += [-100] * len(turn["input_ids"]) + turn["labels"]
    return input_ids, labels


def expected_samples(shards_dir) -> list[tuple[list[int], list[int]]]:
    """Each document with a counted target, up to its last one, as (tokens, counted)."""
    out = []
    for tokens, counted in shard_documents(shards_dir):
        trained = np.flatnonzero(counted)
        if trained.size:
            end = int(trained[-1]) + 1
            out.append((tokens[:end].tolist(), counted[:end].tolist()))
    return out


@pytest.fixture(scope="module", params=["rows", "packed"])
def exported(request, tmp_path_factory):
    shards_dir = request.getfixturevalue("packed_prepared_dir" if request.param == "packed" else "prepared_dir")
    out = tmp_path_factory.mktemp("mds") / "mds"
    info = export_mds(ShardSet(shards_dir), out, size_limit=40_000)  # several shards
    return shards_dir, out, info


def test_every_document_reads_back_by_the_byte_spec(exported):
    shards_dir, out, info = exported
    samples = parse_mds(out)
    expected = expected_samples(shards_dir)
    assert len(samples) == len(expected) == info["documents"] and len(list(out.glob("shard.*.mds"))) > 1
    for sample, (tokens, counted) in zip(samples, expected, strict=True):
        input_ids, labels = foundry_stitch(sample["turns"])
        assert input_ids == tokens
        assert labels == [t if c else -100 for t, c in zip(tokens, counted, strict=True)]
    sidecar = json.loads((out / EXPORT_INFO_NAME).read_text())
    left_out = sum(t.size for t, _ in shard_documents(shards_dir)) - sum(len(t) for t, _ in expected)
    assert sidecar["trailing_untrained_tokens_left_out"] == left_out > 0
    assert sidecar["source"]["manifest_sha256"]


def test_turns_alternate_untrained_and_counted_runs():
    tokens = np.arange(10)
    counted = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 0], dtype=np.uint8)
    assert document_turns(tokens, counted) == [
        {"input_ids": [0, 1], "labels": [2, 3]},
        {"input_ids": [4], "labels": [5]},
        {"input_ids": [6, 7], "labels": [8]},
    ]  # the trailing untrained token 9 is left out
    assert document_turns(tokens, np.zeros(10, dtype=np.uint8)) == []


def reference_turns(tokens: list[int], counted: list[int]) -> list[dict[str, list[int]]]:
    """One document's turns, run by run in plain Python: untrained run, counted run, ... up to the last counted."""
    if not any(counted):
        return []
    end = max(k for k, c in enumerate(counted) if c) + 1
    runs: list[list[int]] = [[]]
    for k in range(end):
        if k and counted[k] != counted[k - 1]:
            runs.append([])
        runs[-1].append(tokens[k])
    return [{"input_ids": runs[k], "labels": runs[k + 1]} for k in range(0, len(runs), 2)]


def test_a_batchs_turns_are_each_documents_turns():
    """batch_turns over many documents at once (runs found over the whole batch) equals each document alone,
    including documents that start right after one whose last token counts."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        offsets = np.concatenate([[0], np.cumsum(rng.integers(2, 12, rng.integers(1, 30)))])
        tokens = rng.integers(0, 100, offsets[-1])
        counted = rng.integers(0, 2, offsets[-1]).astype(np.uint8)
        counted[offsets[:-1]] = 0  # a document's first token is never a target
        turns, _ = batch_turns(tokens, counted, offsets)
        spans = itertools.pairwise(offsets.tolist())
        assert turns == [reference_turns(tokens[a:b].tolist(), counted[a:b].tolist()) for a, b in spans]


@pytest.fixture(scope="module")
def streaming():
    """MosaicML's package, without its vision/text/multimodal datasets (they need torchvision; the MDS reader
    and StreamingDataset do not)."""
    if MDS_READER.is_dir() and str(MDS_READER) not in sys.path:
        sys.path.append(str(MDS_READER))
    if importlib.util.find_spec("streaming") is None:
        pytest.skip(STREAMING_MISSING)
    for name in ("streaming.multimodal", "streaming.text", "streaming.vision"):
        sys.modules.setdefault(name, types.ModuleType(name))
    return importlib.import_module("streaming")


def test_streamings_own_dataset_reads_every_sample(exported, streaming):
    shards_dir, out, _ = exported
    dataset = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    expected = expected_samples(shards_dir)
    assert dataset.num_samples == len(expected)
    for k, (tokens, counted) in enumerate(expected):
        input_ids, labels = foundry_stitch(dataset[k]["turns"])
        assert input_ids == tokens
        assert labels == [t if c else -100 for t, c in zip(tokens, counted, strict=True)]


def test_the_bytes_equal_mdswriters(exported, streaming, tmp_path):
    _, out, _ = exported
    reference = tmp_path / "reference"
    with streaming.MDSWriter(columns={"turns": "json"}, out=str(reference), size_limit=40_000) as writer:
        for sample in parse_mds(out):
            writer.write(sample)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in out.iterdir() if p.name != EXPORT_INFO_NAME)
    for name in names:
        assert (reference / name).read_bytes() == (out / name).read_bytes(), name


def documented_train_loader() -> dict:
    import re

    import yaml

    docs = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL) if "train_loader" in b)
    return yaml.safe_load(block)["train_loader"]


@pytest.fixture(scope="module")
def llm_foundry():
    src = source_folder(LLM_FOUNDRY_ENV, "llmfoundry/data/finetuning/collator.py")
    if src is None:
        pytest.skip(
            f"llm-foundry {LLM_FOUNDRY_VERSION} does not install here (it pins torch 2.7.0, transformers <4.52): set "
            f"{LLM_FOUNDRY_ENV} to its unpacked wheel to run its own collator (tests/consumers/foreign_readers.py)"
        )
    with foreign_llm_foundry(src) as modules:
        yield modules


def test_llm_foundrys_own_collator_trains_exactly_the_counted_targets(exported, streaming, llm_foundry):
    """Every sample StreamingDataset reads, collated by llm-foundry's Seq2SeqFinetuningCollator with the
    documented loader's settings: input_ids are the document's tokens, the labels its counted targets (-100
    elsewhere). The collator appends the tokenizer's EOS to a document whose last counted target is not EOS, as
    docs/export.md says; every fixture document ends its counted targets with EOS (templates train the end of
    turn, text documents get EOS), so none gets one here."""
    from transformers import AutoTokenizer

    shards_dir, out, _ = exported
    settings = documented_train_loader()["dataset"]
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    collator = llm_foundry.collator.Seq2SeqFinetuningCollator(
        tokenizer=tokenizer,
        max_seq_len=settings["max_seq_len"],
        decoder_only_format=settings["decoder_only_format"],
        target_prompts=settings["target_prompts"],
        target_responses=settings["target_responses"],
    )
    dataset = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    expected = expected_samples(shards_dir)
    appended = 0
    for start in range(0, len(expected), 64):
        chunk = expected[start : start + 64]
        batch = collator([dataset[start + k] for k in range(len(chunk))])
        for k, (tokens, counted) in enumerate(chunk):
            labels = [t if c else -100 for t, c in zip(tokens, counted, strict=True)]
            if tokens[-1] != tokenizer.eos_token_id:
                tokens, labels = [*tokens, tokenizer.eos_token_id], [*labels, tokenizer.eos_token_id]
                appended += 1
            n = len(tokens)
            assert batch["input_ids"][k, :n].tolist() == tokens, start + k
            assert batch["labels"][k, :n].tolist() == labels, start + k
            assert batch["attention_mask"][k].sum() == n and (batch["labels"][k, n:] == -100).all(), start + k
    assert appended == 0


def test_the_documented_llm_foundry_loader_asks_for_the_turns_as_exported():
    """docs/export.md's llm-foundry `train_loader`: the finetuning loader over a local MDS folder, with the
    target settings under which llm-foundry trains exactly each turn's labels (the stitching above)."""
    loader = documented_train_loader()
    assert loader["name"] == "finetuning"
    dataset = loader["dataset"]
    assert dataset["decoder_only_format"] is True
    assert (dataset["target_prompts"], dataset["target_responses"]) == ("none", "all")
    assert dataset["local"] == "mds/"


def test_documents_without_a_counted_target_are_left_out_and_counted(kit, tmp_path):
    """llm-foundry refuses a sample whose turns train nothing: such a document is not written, and
    `_export.json` counts it."""
    docs = kit.random_documents(np.random.default_rng(7), 40)
    for k in (0, 9, 33):
        docs[k] = (docs[k][0], np.zeros_like(docs[k][1]))
    info = export_mds(ShardSet(kit.write(docs, rows_per_shard=15, batch_rows=4)), tmp_path / "mds")
    untrained = [k for k, (_, m) in enumerate(docs) if not m[1:].any()]
    samples = parse_mds(tmp_path / "mds")
    assert len(samples) == info["documents"] == 40 - len(untrained)
    assert info["documents_without_targets"] == len(untrained) >= 3
    assert all(turn["labels"] for sample in samples for turn in sample["turns"])


def test_shards_are_cut_where_mdswriter_cuts_them(kit, tmp_path, streaming):
    """The same files and bytes as MDSWriter's at size limits a few bytes either side of where a shard must be
    cut (so the flush rule's count of each sample's 4-byte offset matters), and at MDSWriter's default limit."""
    docs = kit.random_documents(np.random.default_rng(9), 60, max_len=30)
    shards_dir = kit.write(docs, rows_per_shard=60)
    export_mds(ShardSet(shards_dir), tmp_path / "whole")
    data = (tmp_path / "whole" / "shard.00000.mds").read_bytes()
    count = int(np.frombuffer(data[:4], "<u4")[0])
    offsets = np.frombuffer(data[4 : 4 + 4 * (count + 1)], "<u4").astype(int)
    sizes = np.diff(offsets)  # each sample's bytes
    config = json.loads(data[4 + 4 * (count + 1) : offsets[0]])

    def edge(k: int, size_limit_digits: int) -> int:
        """The least size limit at which sample k still joins the first shard (MDSWriter counts 4 + 4 bytes of
        header, the config, and each sample's bytes plus its 4-byte offset)."""
        text = json.dumps({**config, "size_limit": 10 ** (size_limit_digits - 1)}, sort_keys=True)
        return 8 + len(text) + int(np.sum(sizes[: k + 1] + 4))

    edges = [edge(k, 4) for k in (5, 12, 20)]
    assert all(1_000 <= e - 2 < e + 2 < 10_000 for e in edges)  # four-digit limits, as edge() assumes
    for size_limit in [*(e + step for e in edges for step in range(-2, 3)), None]:
        out, reference = tmp_path / f"mds-{size_limit}", tmp_path / f"ref-{size_limit}"
        options = {} if size_limit is None else {"size_limit": size_limit}
        export_mds(ShardSet(shards_dir), out, **options)
        with streaming.MDSWriter(columns={"turns": "json"}, out=str(reference), **options) as writer:
            for sample in parse_mds(out):
                writer.write(sample)
        names = sorted(p.name for p in reference.iterdir())
        assert names == sorted(p.name for p in out.iterdir() if p.name != EXPORT_INFO_NAME), size_limit
        assert all((reference / n).read_bytes() == (out / n).read_bytes() for n in names), size_limit
