"""`lossmask export` and `lossmask inspect` from the command line."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.export.report import CLOSE, OPEN
from lossmask.pipeline.tokenizer import load_tokenizer


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("hf", "train-00000-of-00004.parquet"),
        ("numpy", "header.json"),
        ("olmo-core", "token_ids_part_0000.npy"),
        ("datatrove", "00003_lossmask.ds.loss"),
        ("mds", "index.json"),
        ("megatron-bridge", "train-00003-of-00004.idx.parquet"),
    ],
)
def test_export_writes_and_summarizes(prepared_dir, tmp_path, target, expected):
    result = run("export", str(prepared_dir), "--to", target, str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / expected).is_file()
    assert result.output.startswith(f"export:   {tmp_path / 'out'}/")


def test_export_arrow_format(prepared_dir, tmp_path):
    result = run("export", str(prepared_dir), "--to", "hf", "--file-format", "arrow", str(tmp_path / "out"), "-q")
    assert result.exit_code == 0 and result.output == ""
    assert len(list((tmp_path / "out").glob("train-*.arrow"))) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{missing}", "--to", "hf", "{out}"], "has no _manifest.json"),
        (["export", "{shards}", "--to", "hf", "{shards}"], "the shard folder itself"),
        (["inspect", "{missing}"], "has no _manifest.json"),
        (["inspect", "{shards}", "--tokenizer", "{missing}"], "does not exist"),
    ],
)
def test_bad_jobs_exit_2_with_one_message(prepared_dir, tmp_path, args, message):
    values = {"missing": str(tmp_path / "nothing"), "out": str(tmp_path / "out"), "shards": str(prepared_dir)}
    result = run(*[a.format(**values) for a in args])
    assert result.exit_code == 2
    assert result.output.count("lossmask: error:") == 1 and message in result.output


def test_export_requires_a_target(prepared_dir, tmp_path):
    result = run("export", str(prepared_dir), str(tmp_path / "out"))
    assert result.exit_code == 2 and "--to" in result.output


def test_inspect_shows_manifest_schema_and_decoded_rows(prepared_dir):
    manifest = json.loads((prepared_dir / "_manifest.json").read_text())
    result = run("inspect", str(prepared_dir), "--rows", "4", "--start", "2", "--no-color")
    assert result.exit_code == 0, result.output
    out = result.output
    records = manifest["records"]
    assert records["rejected"] == 8  # the 8 bad lines of malformed.jsonl (tests/test_accounting.py); the rest is clean
    assert f"{records['read']} read = {records['written']} written + {records['rejected']} rejected" in out
    for reason, count in records["by_reason"]["rejected"].items():
        assert re.search(rf"^\s+{count} rejected: {reason}$", out, re.MULTILINE)
    assert (
        f"tokenizer  {manifest['config']['tokenizer']}  sha256 {manifest['fingerprints']['tokenizer']['sha256'][:12]}"
        in out
    )
    for shard in manifest["shards"]:
        assert f"{shard['file']}  {shard['rows']} rows" in out
    for name in ("input_ids", "target_ids", "loss_mask", "token_class", "flags"):
        assert re.search(rf"^  {name}\s+\S+", out, re.MULTILINE)
    assert "1 where the target counts toward the loss" in out  # the column docs come from the shard schema
    assert re.findall(r"^row (\d+) ", out, re.MULTILINE) == ["2", "3", "4", "5"]


def test_inspect_marks_exactly_the_counted_targets(prepared_dir):
    """The text between the marks, joined, is the decoded counted targets of the row, nothing more or less."""
    table = ds.dataset(str(prepared_dir), format="arrow").to_table().slice(0, 3).to_pydict()
    tokenizer = load_tokenizer(str(json.loads((prepared_dir / "_manifest.json").read_text())["config"]["tokenizer"]))
    out = run("inspect", str(prepared_dir), "--rows", "3", "--no-color").output
    blocks = re.split(r"^row \d+ .*$", out, flags=re.MULTILINE)[1:]
    assert len(blocks) == 3
    for k, block in enumerate(blocks):
        targets, mask = np.array(table["target_ids"][k]), np.array(table["loss_mask"][k], dtype=bool)
        runs = np.split(np.arange(mask.size), np.flatnonzero(np.diff(mask.astype(int))) + 1)
        expected = [
            tokenizer.tokenizer.decode(targets[r].tolist(), skip_special_tokens=False) for r in runs if mask[r[0]]
        ]
        text = "\n".join(line[4:] for line in block.split("\n") if line.startswith("    "))
        assert re.findall(f"{OPEN}(.*?){CLOSE}", text, flags=re.DOTALL) == expected


def test_inspect_packed_rows_lists_each_document(kit):
    docs = kit.random_documents(np.random.default_rng(41), 9)
    shards = kit.write(docs, packed=True, pack_sizes=(3,))
    out = run("inspect", str(shards), "--rows", "1", "--no-color").output
    assert "schema (packed layout)" in out and re.search(r"^  segment_ids\s+list", out, re.MULTILINE)
    assert "row 0  " in out and "3 documents" in out
    for d in range(3):
        assert f"  document {d}  synthetic.jsonl:{d + 1}  record {d}  part 0  flags -" in out


def test_inspect_without_its_tokenizer_shows_ids(kit):
    shards = kit.write([(np.array([5, 6, 7, 8], dtype=np.int32), np.array([0, 0, 1, 1], dtype=np.uint8))])
    manifest_path = shards / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["tokenizer"] = str(shards / "gone")
    manifest_path.write_text(json.dumps(manifest))
    out = run("inspect", str(shards), "--no-color").output
    assert "token ids are shown" in out
    assert f"    5 6 {OPEN}7 8{CLOSE}" in out


def test_inspect_verify_catches_a_changed_shard(kit):
    shards = kit.write(kit.random_documents(np.random.default_rng(42), 4))
    assert "(sha256 checked)" in run("inspect", str(shards), "--verify", "--rows", "0").output
    shard = next(shards.glob("shard-*.arrow"))
    shard.write_bytes(shard.read_bytes() + b"\0")
    result = run("inspect", str(shards), "--verify")
    assert result.exit_code == 2 and "does not match the sha256" in result.output


def test_inspect_names_a_row_that_is_not_a_shifted_document(kit):
    from lossmask.pipeline.write import write_shard

    docs = [(np.arange(n, dtype=np.int32), np.ones(n, dtype=np.uint8)) for n in (5, 6)]
    shards = kit.write(docs)
    rows = [kit.shifted_row(doc, i) for i, doc in enumerate(docs)]
    rows[1].input_ids = rows[1].input_ids + 1  # no longer t[:-1] of the targets' document
    write_shard(next(shards.glob("shard-*.arrow")), rows)
    result = run("inspect", str(shards), "--no-color")
    assert result.exit_code == 0
    assert re.search(r"^row 1  \d+ positions: not a shifted document \(row 0: input_ids\[k \+ 1\]", result.output, re.M)
    assert re.search(r"^row 0  \d+ positions, \d+ counted$", result.output, re.MULTILINE)


@pytest.mark.parametrize("target", ["olmo-core", "datatrove", "mds", "megatron-bridge"])
def test_exporting_again_into_the_same_folder_leaves_no_stale_files(kit, prepared_dir, tmp_path, target):
    """A second, smaller export replaces the first: the files the first wrote and the second does not are gone,
    and a file of the user's own stays."""
    out = tmp_path / "out"
    assert run("export", str(prepared_dir), "--to", target, str(out), "-q").exit_code == 0
    (out / "notes.txt").write_text("mine")
    small = kit.write(kit.random_documents(np.random.default_rng(31), 5))
    assert run("export", str(small), "--to", target, str(out), "-q").exit_code == 0
    fresh = tmp_path / "fresh"
    assert run("export", str(small), "--to", target, str(fresh), "-q").exit_code == 0
    listing = sorted(p.name for p in out.iterdir() if p.name != "notes.txt")
    assert listing == sorted(p.name for p in fresh.iterdir())
    assert (out / "notes.txt").read_text() == "mine"
