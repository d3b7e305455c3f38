"""The unit job (`jobs/units.py`): rows written work unit by work unit, the same bytes on any engine and worker
count, resumed unit by unit, and on Ray a driver that only plans.

What each test would catch: rows, rejects or counts that depend on where units end (a record lost or repeated at
a cut, a record index or line restarted); bytes that depend on the engine or workers; a resumed run that redoes a
finished unit or misses an unfinished one; a driver that reads the input itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lossmask.jobs.checkpoint import CHECKPOINT_NAME
from lossmask.jobs.outdir import Inventory

from .support import DATA, FIXTURE_TOKENIZER, FIXTURES, read_table, run_prepare, write_distinct_conversations

BAD = FIXTURES / "bad" / "malformed.jsonl"


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A large JSONL file (cut into byte ranges), a Parquet file of many row groups (cut into row-group ranges),
    small files (grouped) and a file of bad lines: every kind of unit, with rejects in several of them."""
    folder = tmp_path_factory.mktemp("corpus")
    # a reject and a blank line inside ranges, every 97 conversations
    big = write_distinct_conversations(folder / "big.jsonl", 6, "not json\n\n", lambda i: i % 97 == 0)
    texts = [json.loads(line)["text"] for line in (DATA / "text.jsonl").read_text(encoding="utf-8").splitlines()]
    table = {"text": [f"{t} [{k}]" for k in range(5) for t in texts]}
    import pyarrow as pa

    pq.write_table(pa.table(table), folder / "docs.parquet", row_group_size=20)
    return [big, folder / "docs.parquet", DATA / "prompt_completion.jsonl", DATA / "tools.jsonl", BAD]


def unit_names(out: Path) -> list[str]:
    return [s["file"] for s in json.loads((out / "_manifest.json").read_text())["shards"]]


def test_rows_rejects_and_counts_do_not_depend_on_the_unit_size(corpus, tmp_path):
    outs = {}
    for unit_bytes in (64 << 20, 50_000, 7_000):
        manifest, out = run_prepare(tmp_path, corpus, unit_bytes=unit_bytes, out_name=f"u{unit_bytes}")
        outs[unit_bytes] = (manifest, out)
    whole_manifest, whole = outs[64 << 20]
    assert len({name.split("-")[1] for name in unit_names(whole)}) == 1  # everything fits in one unit
    reference = read_table(whole)
    for unit_bytes in (50_000, 7_000):
        manifest, out = outs[unit_bytes]
        assert len({name.split("-")[1] for name in unit_names(out)}) > 3  # really cut into units
        assert read_table(out).equals(reference)
        assert (out / "_rejects.jsonl").read_bytes() == (whole / "_rejects.jsonl").read_bytes()
        assert manifest["records"] == whole_manifest["records"]
        assert manifest["datasets"] == whole_manifest["datasets"]
    assert whole_manifest["records"]["rejected"] > 3  # rejects in several units, joined in order


@pytest.mark.parametrize("workers", [2, 4])
def test_the_same_bytes_with_any_number_of_workers(corpus, tmp_path, workers):
    _, one = run_prepare(tmp_path, corpus, unit_bytes=7_000, workers=1, batch_size=16, out_name="one")
    _, many = run_prepare(tmp_path, corpus, unit_bytes=7_000, workers=workers, batch_size=16, out_name="many")
    assert files(many) == files(one)


def _command(corpus: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lossmask.cli",
        "prepare",
        *map(str, corpus),
        "--tokenizer",
        str(FIXTURE_TOKENIZER),
        "--out",
        str(out),
        "--unit-bytes",
        "7000",
        "--batch-size",
        "16",
        "-q",
        *extra,
    ]


def _killed_then_resumed(corpus, out: Path, engine: str, resume_engine: str, saves: int) -> dict:
    """Kill the run (SIGKILL) after its `saves`-th checkpoint save, check that the kill landed between units,
    then rerun the same command; returns the checkpoint the killed run left."""
    env = {**os.environ, "LOSSMASK_CRASH_AT": f"checkpoint-saved:{saves}", "LOSSMASK_CHECKPOINT_SECONDS": "0"}
    killed = subprocess.run(_command(corpus, out, "--engine", engine), env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert 0 < len(checkpoint["units"]) < checkpoint["unit_total"]  # mid-run: some units done, not all
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for u in checkpoint["units"].values() for s in u["shards"]}
    assert kept
    rerun = subprocess.run(_command(corpus, out, "--engine", resume_engine), capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished units were not redone
    return checkpoint


def test_a_killed_run_resumes_redoing_only_the_units_not_finished(corpus, tmp_path):
    reference = tmp_path / "reference"
    assert subprocess.run(_command(corpus, reference)).returncode == 0
    out = tmp_path / "out"
    _killed_then_resumed(corpus, out, "local", "local", saves=3)
    assert files(out) == files(reference)


def test_a_run_killed_inside_a_unit_resumes_after_its_last_shard(corpus, tmp_path):
    """The local engine checkpoints the unit in progress after each shard: a rerun keeps those shards and that
    part of the unit's rejects, and goes on from the next record."""
    options = ("--unit-bytes", str(64 << 20), "--shard-max-rows", "40")  # one unit of many shards
    reference = tmp_path / "reference"
    assert subprocess.run([*_command(corpus, reference), *options]).returncode == 0
    out = tmp_path / "out"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:3"}
    assert subprocess.run([*_command(corpus, out), *options], env=env).returncode == -9
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert checkpoint["units"] == {} and checkpoint["partial"]["unit"] == 0
    assert len(checkpoint["partial"]["shards"]) == 3 and checkpoint["partial"]["rejects_bytes"] > 0
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in checkpoint["partial"]["shards"]}
    assert subprocess.run([*_command(corpus, out), *options]).returncode == 0
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert files(out) == files(reference)


def test_files_of_units_in_the_making_are_the_jobs_own_and_no_others(corpus, tmp_path):
    """While a unit job runs, the checkpoint proves the files of its unfinished units (written in any order on
    Ray); a name like a unit's but beyond the job's units stays unknown."""
    out = tmp_path / "out"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:2"}
    assert subprocess.run(_command(corpus, out), env=env).returncode == -9
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    total, finished = checkpoint["unit_total"], {int(k) for k in checkpoint["units"]}
    unfinished = next(u for u in range(total) if u not in finished)
    (out / f"shard-u{unfinished:05d}-000.arrow").write_bytes(b"half")
    (out / f".shard-u{unfinished:05d}-001.arrow.tmp").write_bytes(b"half")
    (out / f"shard-u{total:05d}-000.arrow").write_bytes(b"not ours")
    inventory = Inventory.of(out)
    assert f"shard-u{unfinished:05d}-000.arrow" in inventory.owned
    assert f".shard-u{unfinished:05d}-001.arrow.tmp" in inventory.owned
    assert inventory.unknown == [f"shard-u{total:05d}-000.arrow"]
    refused = subprocess.run(_command(corpus, out), capture_output=True, text=True)
    assert refused.returncode == 2 and f"shard-u{total:05d}-000.arrow, which lossmask did not write" in refused.stderr


@pytest.fixture(scope="module")
def local_reference(corpus, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert subprocess.run(_command(corpus, out)).returncode == 0
    return files(out)


@pytest.mark.ray
def test_ray_tasks_write_the_local_engines_bytes(corpus, tmp_path, local_reference):
    out = tmp_path / "ray"
    run = subprocess.run(_command(corpus, out, "--engine", "ray"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert files(out) == local_reference


@pytest.mark.ray
@pytest.mark.parametrize("resume_engine", ["ray", "local"])
def test_a_killed_ray_driver_resumes_with_either_engine(corpus, tmp_path, local_reference, resume_engine):
    """Save 1 is the counting pass, then one per unit: killed after 2 units, the rerun redoes only the others,
    and reuses the counts."""
    out = tmp_path / "out"
    checkpoint = _killed_then_resumed(corpus, out, "ray", resume_engine, saves=3)
    assert len(checkpoint["unit_counts"]) == checkpoint["unit_total"]
    assert files(out) == local_reference


@pytest.mark.ray
def test_a_ray_job_saves_its_checkpoint_at_most_every_so_often(corpus, tmp_path):
    """With an hour between saves, a Ray job saves after its counting pass, after its first unit, and before it
    joins the rejects: killed at the third save, its checkpoint already lists every unit (saved per unit, it
    would list two)."""
    out = tmp_path / "out"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:3", "LOSSMASK_CHECKPOINT_SECONDS": "3600"}
    killed = subprocess.run(_command(corpus, out, "--engine", "ray"), env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert checkpoint["unit_total"] > 3
    assert len(checkpoint["units"]) == checkpoint["unit_total"]
    assert checkpoint["rejects_bytes"] > 0  # the save before the rejects are joined
