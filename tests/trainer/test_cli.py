"""`lossmask train` and `lossmask explain` as a user runs them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.errors import SetupError
from lossmask.schemas.shards import MANIFEST_NAME
from lossmask.trainer.cli import print_train_summary
from lossmask.trainer.explain import explain, format_explanation
from lossmask.trainer.shards import iter_examples, open_shards
from lossmask.trainer.train import TrainConfig, train
from tokenizers import Tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def table_rows(output: str) -> list[tuple[str, float, float]]:
    """(counts, p, -log p) of each line of the printed table."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("pos")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        _, counts, p, nll = line.rsplit(None, 3)
        rows.append((counts, float(p), float(nll)))
    return rows


def printed_loss(output: str) -> float:
    line = next(line for line in output.splitlines() if line.startswith("loss = "))
    return float(line.split("=")[2].split()[0])


@pytest.fixture(scope="module")
def trained_run(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    small = ["--steps", "40", "--batch-size", "4", "--layers", "1", "--d-model", "32"]
    code, stdout, stderr = run("train", str(demo_shards), "--out", str(out), *small)
    assert code == 0, stderr
    for name in ("metrics.jsonl", "loss.svg", "model.npz", "run.json"):
        assert str(out / name) in stdout
    return out


def test_train_prints_where_everything_is_and_the_loss(trained_run: Path) -> None:
    summary = json.loads((trained_run / "run.json").read_text())
    assert summary["train"]["steps"] == 40 and summary["model"]["d_model"] == 32
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 40
    assert summary["last_loss"] < summary["first_loss"]


def test_train_reports_wall_time_and_what_the_step_time_covers(trained_run: Path, capsys) -> None:
    summary = json.loads((trained_run / "run.json").read_text())
    assert summary["wall_seconds"] >= summary["seconds"] > 0
    print_train_summary(summary, trained_run)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("time:"))
    assert f"{summary['wall_seconds']:.1f} s wall clock" in line and "the 40 training steps took" in line


def test_explain_untrained_is_near_log_vocab_and_the_loss_is_the_mean_of_counted_rows(demo_shards: Path) -> None:
    code, stdout, stderr = run("explain", str(demo_shards), "--row", "3")
    assert code == 0, stderr
    example = next(iter_examples(open_shards(demo_shards), start=3))
    rows = table_rows(stdout)
    assert len(rows) == example.num_tokens
    assert [counts == "yes" for counts, _, _ in rows] == example.loss_mask.astype(bool).tolist()
    counted = [nll for counts, _, nll in rows if counts == "yes"]
    loss = printed_loss(stdout)
    assert loss == pytest.approx(np.mean(counted), abs=6e-4)  # the table shows -log p to 3 decimals
    assert loss == pytest.approx(math.log(1024), abs=0.1)
    for _, p, nll in rows:
        assert p == pytest.approx(math.exp(-nll), rel=2e-3)


def test_explain_decodes_real_tokens_and_computes_the_exact_mean(demo_shards: Path) -> None:
    explanation = explain(str(demo_shards), 0)
    example = next(iter_examples(open_shards(demo_shards)))
    tokenizer = Tokenizer.from_file(str(FIXTURES / "tokenizer" / "tokenizer.json"))
    assert [p.target for p in explanation.positions] == [
        tokenizer.decode([int(t)], skip_special_tokens=False) for t in example.target_ids
    ]
    assert explanation.positions[0].context == tokenizer.decode([int(example.input_ids[0])], skip_special_tokens=False)
    counted = [p.nll for p in explanation.positions if p.counts]
    assert explanation.loss == pytest.approx(sum(counted) / len(counted), rel=1e-12)
    assert "Paris" in format_explanation(explanation)


def test_explain_with_a_run_shows_the_trained_model(demo_shards: Path, trained_run: Path) -> None:
    code, stdout, stderr = run("explain", str(demo_shards), "--row", "0", "--run", str(trained_run))
    assert code == 0, stderr
    assert "trained, from" in stdout
    untrained = explain(str(demo_shards), 0).loss
    assert printed_loss(stdout) < untrained - 1.0


def test_explain_context_stays_inside_its_document(tmp_path: Path, make_example, pack_examples, packed_shards) -> None:
    rng = np.random.default_rng(5)
    rows = [pack_examples([make_example(rng, 4, vocab=200), make_example(rng, 3, vocab=200)])]
    shards = packed_shards(tmp_path / "packed", rows, 1024)
    explanation = explain(str(shards), 0, context_tokens=20)
    tokenizer = Tokenizer.from_file(str(FIXTURES / "tokenizer" / "tokenizer.json"))
    second_start = explanation.positions[4]
    assert second_start.context == tokenizer.decode([int(rows[0].input_ids[4])], skip_special_tokens=False)
    assert explanation.positions[6].context == tokenizer.decode(
        rows[0].input_ids[4:7].tolist(), skip_special_tokens=False
    )


def test_relative_tokenizer_in_the_manifest_can_be_overridden(demo_shards: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "shards"
    shutil.copytree(demo_shards, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["config"]["tokenizer"] = "fixtures/tokenizer"  # as written by a prepare run from the repository root
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run("explain", str(copy), "--row", "0")
    assert code == 2 and "--tokenizer" in stderr and "Traceback" not in stderr
    code, stdout, stderr = run("explain", str(copy), "--row", "0", "--tokenizer", str(FIXTURES / "tokenizer"))
    assert code == 0, stderr
    assert "loss = mean of -log p" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{empty}", "--out", "{out}"], "_manifest.json"),
        (["train", "{shards}", "--out", "{out}", "--d-model", "30", "--heads", "4"], "multiple of --heads"),
        (["train", "{shards}", "--out", "{out}", "--steps", "0"], "at least 1"),
        (["explain", "{shards}", "--row", "100000"], "out of range"),
        (["explain", "{shards}", "--row", "0", "--run", "{empty}"], "no weights"),
    ],
)
def test_bad_jobs_exit_2_with_one_message(demo_shards: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    values = {"shards": str(demo_shards), "empty": str(tmp_path / "empty"), "out": str(tmp_path / "out")}
    code, _, stderr = run(*[a.format(**values) for a in args])
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1


def test_explain_cuts_a_row_longer_than_the_runs_context(demo_shards: Path, tmp_path: Path) -> None:
    train(demo_shards, tmp_path, TrainConfig(steps=2, seq_len=16, layers=1, d_model=8, heads=2, eval_rows=0))
    shards = open_shards(demo_shards)
    row = next(e.index for e in iter_examples(shards) if e.num_tokens > 16)
    explanation = explain(str(demo_shards), row, run_dir=str(tmp_path))
    assert len(explanation.positions) == 16
    assert any("the model sees the first 16" in note for note in explanation.notes)
    assert json.loads((tmp_path / "run.json").read_text())["eval"]["loss_before"] is None


def test_train_and_explain_refuse_a_shard_that_is_not_the_one_prepare_wrote(demo_shards: Path, tmp_path: Path) -> None:
    """The same rows with one target counted that prepare did not count: still a valid shard of the same layout and
    row count, so only the manifest's sha256 can tell, and the trainer checks it."""
    copy = tmp_path / "shards"
    shutil.copytree(demo_shards, copy)
    shard = copy / json.loads((copy / MANIFEST_NAME).read_text())["shards"][0]["file"]
    with pa.memory_map(str(shard), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    masks = table["loss_mask"].to_pylist()
    masks[0][0] = 1 - masks[0][0]
    table = table.set_column(
        table.schema.get_field_index("loss_mask"), "loss_mask", pa.array(masks, pa.list_(pa.uint8()))
    )
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(SetupError, match=r"does not match the sha256 in _manifest\.json"):
        train(copy, tmp_path / "run", TrainConfig(steps=1, seq_len=16, layers=1, d_model=8, heads=2, eval_rows=0))
    code, _, stderr = run("explain", str(copy), "--row", "0")
    assert code == 2 and "does not match the sha256" in stderr and stderr.count("\n") == 1
