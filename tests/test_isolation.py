"""One bad record never stops a job: an unexpected exception in any stage rejects that record (`internal_error`,
its exact source) and every other record is written exactly as without it.

The faults are injected by `pipeline.faults.record_fault` (LOSSMASK_FAULT_AT=stage), which raises a
`RuntimeError` no stage expects for each record holding the marker; in-process here, and in forkserver workers
through the environment in the last test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lossmask.pipeline import faults
from lossmask.pipeline.faults import FAULT_MARKER

from .support import FIXTURE_TOKENIZER, read_rejects, read_rows, run_prepare, write_jsonl

STAGES = ["read", "parse", "render", "tokenize", "fit", "shift"]
FAULTY = {3, 6}  # record indexes that carry the marker


def conversation(k: int) -> dict:
    text = f"question {k} {FAULT_MARKER}" if k in FAULTY else f"question {k}"
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer {k}."}]}


def rows_by_record(out) -> dict[int, list[list[int]]]:
    rows: dict[int, list[list[int]]] = {}
    for row in read_rows(out):
        rows.setdefault(row["record_index"], []).append(row["input_ids"])
    return rows


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [conversation(k) for k in range(10)]


@pytest.mark.parametrize("stage", STAGES)
def test_a_fault_in_any_stage_rejects_only_its_record(stage, records, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    clean, clean_out = run_prepare(tmp_path, [path], out_name="clean", batch_size=4)
    assert clean["records"]["written"] == 10
    monkeypatch.setattr(faults, "_FAULT_STAGE", stage)
    manifest, out = run_prepare(tmp_path, [path], out_name="faulty", batch_size=4)

    counts = manifest["records"]
    assert (counts["read"], counts["written"], counts["rejected"]) == (10, 8, 2)
    assert counts["by_reason"]["rejected"] == {"internal_error": 2}
    rejects = read_rejects(out)
    assert [r["source"] for r in rejects] == [f"{path}:{k + 1}" for k in sorted(FAULTY)]
    assert all(f"fault injected in {stage}" in r["detail"] for r in rejects)
    expected = {k: v for k, v in rows_by_record(clean_out).items() if k not in FAULTY}
    assert rows_by_record(out) == expected


def test_workers_isolate_faults_too(records, tmp_path):
    """Forkserver workers (2 of them, 5 batches): the fault comes through the environment."""
    path = write_jsonl(tmp_path / "data.jsonl", records * 2)
    out = tmp_path / "out"
    env = {**os.environ, "LOSSMASK_FAULT_AT": "tokenize"}
    command = [
        sys.executable, "-m", "lossmask.cli", "prepare", str(path), "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", str(out), "--workers", "2", "--batch-size", "4", "-q",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    counts = json.loads((out / "_manifest.json").read_text())["records"]
    assert (counts["read"], counts["written"], counts["by_reason"]["rejected"]) == (20, 16, {"internal_error": 4})
