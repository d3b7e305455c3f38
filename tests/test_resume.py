"""Crash-safe: kill -9 at any point, run the same command again, and the output is byte-identical to a run
that never stopped. Nothing from a dead run is taken for finished output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import DATA, FIXTURE_TOKENIZER, FIXTURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """~3200 records with some bad ones among them, so rejects must survive a resume too."""
    folder = tmp_path_factory.mktemp("input")
    lines = (DATA / "openai.jsonl").read_text().splitlines() + (
        FIXTURES / "bad" / "malformed.jsonl"
    ).read_text().splitlines()
    path = folder / "big.jsonl"
    path.write_text("\n".join(lines * 8) + "\n")
    return path


def command(big_input: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", str(big_input), "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", str(out), "--workers", str(workers), "--shard-max-rows", "150", "--batch-size", "64", "-q", *extra,
    ]  # fmt: skip


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def shards(files: dict[str, bytes]) -> int:
    return sum(name.endswith(".arrow") for name in files)


def full_shards_and_the_rest(files: dict[str, bytes]) -> int:
    """How many shards the manifest's rows make at its --shard-max-rows: every one full but the last."""
    manifest = json.loads(files["_manifest.json"])
    return -(-manifest["totals"]["rows"] // manifest["config"]["shard_max_rows"])


@pytest.fixture(scope="module")
def reference(big_input, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(command(big_input, out, 1), check=True)
    files = outputs(out)
    assert shards(files) > 10
    assert shards(files) == full_shards_and_the_rest(files)
    assert set(files) >= {"_manifest.json", "_rejects.jsonl"} and "_checkpoint.json" not in files
    return files


@pytest.mark.parametrize(
    "crash_at", ["shard-half-written:3", "shard-renamed:5", "checkpoint-saved:7", "shard-half-written:1"]
)
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_at_a_point_then_rerun_is_byte_identical(big_input, reference, tmp_path, crash_at, workers):
    out = tmp_path / "out"
    killed = subprocess.run(command(big_input, out, workers), env={**os.environ, "LOSSMASK_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "_manifest.json").exists()
    subprocess.run(command(big_input, out, workers), check=True)
    assert outputs(out) == reference


def test_killed_from_outside_after_some_shards_then_rerun_is_byte_identical(big_input, reference, tmp_path):
    """A SIGKILL from outside, at no point the code chose: once a few shards are in place, long before the last.
    The kill must be seen to land mid-run, or a run that finished first would pass without testing anything."""
    out = tmp_path / "out"
    process = subprocess.Popen(command(big_input, out, 2))
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if len(list(out.glob("shard-*.arrow"))) >= 4:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill: make the input longer"
    assert not (out / "_manifest.json").exists()
    assert 4 <= len(list(out.glob("shard-*.arrow"))) < shards(reference)
    subprocess.run(command(big_input, out, 2), check=True)
    assert outputs(out) == reference


def test_a_changed_job_starts_over_with_overwrite_instead_of_resuming(big_input, reference, tmp_path):
    out = tmp_path / "out"
    subprocess.run(command(big_input, out, 1), env={**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:3"})
    assert (out / "_checkpoint.json").exists()
    changed = [*command(big_input, out, 1), "--mask", "last-assistant"]
    refused = subprocess.run(changed, capture_output=True, text=True)  # another job's output: not without asking
    assert refused.returncode == 2 and "another job's output" in refused.stderr, refused.stderr
    subprocess.run([*changed, "--overwrite"], check=True)
    fresh = tmp_path / "fresh"
    subprocess.run([*command(big_input, fresh, 1), "--mask", "last-assistant"], check=True)
    assert outputs(out) == outputs(fresh)


# Packed output: a shard can end in the middle of a window's rows (--pack) or of a document (--concat); the rerun
# makes the rest of that window, or of that stream, again from the records and skips what is already written.
PACKED = {
    "pack": ["--pack", "256", "--pack-window", "700", "--shard-max-rows", "40"],
    "concat": ["--concat", "128", "--shard-max-rows", "60"],
}


@pytest.fixture(scope="module")
def packed_reference(big_input, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    references = {}
    for mode, extra in PACKED.items():
        out = tmp_path_factory.mktemp(mode) / "out"
        subprocess.run(command(big_input, out, 1, *extra), check=True)
        references[mode] = outputs(out)
        assert shards(references[mode]) > 8
        assert shards(references[mode]) == full_shards_and_the_rest(references[mode])
    return references


@pytest.mark.parametrize(
    ("mode", "crash_at", "workers"),
    [("pack", "checkpoint-saved:4", 2), ("pack", "shard-half-written:7", 1), ("concat", "shard-renamed:5", 1)],
)
def test_a_killed_packed_run_resumes_byte_identical(big_input, packed_reference, tmp_path, mode, crash_at, workers):
    out = tmp_path / "out"
    run = command(big_input, out, workers, *PACKED[mode])
    killed = subprocess.run(run, env={**os.environ, "LOSSMASK_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL
    checkpoint = json.loads((out / "_checkpoint.json").read_text())
    carried = checkpoint["replay"].get("rows_written" if mode == "pack" else "positions_written", 0)
    assert carried > 0, "the kill should land where part of a window or document is carried over"
    subprocess.run(run, check=True)
    assert outputs(out) == packed_reference[mode]
