"""`--out` is the user's folder: lossmask creates, replaces and deletes only files it can prove its own job's.

Each test puts something in the way (a user's file, a file named like a shard, another job's finished or killed
output, a second run) and checks both what the command says (exit 2, one line, no traceback) and that every byte
of what was there before is still there."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lossmask.jobs.outdir import LOCK_NAME, Inventory, OutputLock

from .support import DATA, FIXTURE_TOKENIZER


def prepare_command(out: Path, *extra: str, inputs: tuple[Path, ...] = (DATA / "openai.jsonl",)) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", *map(str, inputs), "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", str(out), "--shard-max-rows", "10", "-q", *extra,
    ]  # fmt: skip


def run(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        prepare_command(out, *extra), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmask: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def job_a(tmp_path_factory) -> dict[str, bytes]:
    """A finished job's output in a folder of its own: what a second job must not destroy."""
    out = tmp_path_factory.mktemp("a") / "out"
    assert run(out).returncode == 0
    written = files(out)
    assert sum(name.endswith(".arrow") for name in written) >= 2
    return written


def copy_of(written: dict[str, bytes], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in written.items():
        (out / name).write_bytes(data)
    return out


def test_a_folder_with_the_users_files_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run(out), "notes.txt", "--overwrite")
    assert files(out) == {"notes.txt": b"mine"}


def test_overwrite_writes_beside_the_users_files_without_touching_them(tmp_path, job_a):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(out, "--overwrite").returncode == 0
    written = files(out)
    assert written.pop("notes.txt") == b"mine"
    assert written == job_a


@pytest.mark.parametrize("name", ["shard-00099.arrow", "shard-foo.arrow", "shard-00000.arrow", "_manifest.json"])
def test_a_file_the_job_would_write_but_did_not_is_never_replaced_even_with_overwrite(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("mine")
    result = run(out, "--overwrite")
    if name in ("shard-00099.arrow", "shard-foo.arrow"):  # names the job could write: they block it
        assert_one_line_error(result, name, "did not write")
    else:
        assert_one_line_error(result, name)
    assert files(out) == {name: b"mine"}


def test_another_jobs_output_is_refused_and_kept_byte_for_byte(tmp_path, job_a):
    out = copy_of(job_a, tmp_path / "out")
    assert_one_line_error(run(out, "--max-length", "64"), "another job", "--overwrite")
    assert files(out) == job_a


def test_overwrite_replaces_exactly_the_other_jobs_files(tmp_path, job_a):
    out = copy_of(job_a, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    assert run(out, "--max-length", "64", "--overwrite").returncode == 0
    fresh = tmp_path / "fresh"
    assert run(fresh, "--max-length", "64").returncode == 0
    written = files(out)
    assert written.pop("notes.txt") == b"mine"
    assert written == files(fresh)  # nothing of job A is left: not a shard past B's last, not its rejects
    assert written != job_a


def test_the_same_job_run_again_replaces_its_own_output(tmp_path, job_a):
    out = copy_of(job_a, tmp_path / "out")
    assert run(out).returncode == 0
    assert files(out) == job_a


def test_a_changed_shard_is_no_longer_proven_and_so_not_ours(tmp_path, job_a):
    out = copy_of(job_a, tmp_path / "out")
    (out / "shard-00001.arrow").write_bytes(b"edited by the user")
    inventory = Inventory.of(out)
    assert inventory.unknown == ["shard-00001.arrow"]
    assert_one_line_error(run(out, "--overwrite"), "shard-00001.arrow")
    assert (out / "shard-00001.arrow").read_bytes() == b"edited by the user"


def test_a_killed_runs_files_are_proven_by_its_checkpoint(tmp_path):
    """Killed before its first shard was renamed: its checkpoint proves the rejects and the shard in flight."""
    out = tmp_path / "out"
    killed = run(out, env={"LOSSMASK_CRASH_AT": "shard-half-written:1"})
    assert killed.returncode == -9
    left = files(out)
    left.pop(LOCK_NAME)  # a dead run's lock file: no longer locked, replaced by the next run's
    assert "_checkpoint.json" in left and any(name.endswith(".tmp") for name in left)
    assert not Inventory.of(out).unknown
    assert_one_line_error(run(out, "--max-length", "64"), "another job")
    assert files(out) == left
    assert run(out, "--max-length", "64", "--overwrite").returncode == 0
    assert "_checkpoint.json" not in files(out)


def test_a_second_run_into_a_locked_folder_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out).acquire()
    try:
        assert_one_line_error(run(out), f"another prepare (pid {os.getpid()}) is writing")
    finally:
        lock.release()
    assert not (out / LOCK_NAME).exists()
    assert run(out).returncode == 0
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_runs_at_once_one_writes_and_the_other_exits_2(tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text((DATA / "openai.jsonl").read_text() * 40)
    out = tmp_path / "out"
    first = subprocess.Popen(prepare_command(out, "--workers", "1", inputs=(big,)), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(prepare_command(out, inputs=(big,)), capture_output=True, text=True, timeout=300)
    still_running = first.poll() is None
    assert first.wait(300) == 0, first.stderr.read() if first.stderr else ""
    assert still_running, "the first run ended before the second started: the test proved nothing"
    assert_one_line_error(second, f"another prepare (pid {first.pid})")
    reference = tmp_path / "reference"
    assert subprocess.run(prepare_command(reference, inputs=(big,)), timeout=300).returncode == 0
    assert files(out) == files(reference)


def test_a_job_that_writes_nothing_exits_2_with_its_reasons(tmp_path):
    data = tmp_path / "openai.jsonl"
    data.write_text((DATA / "openai.jsonl").read_text())
    out = tmp_path / "out"
    result = subprocess.run(
        prepare_command(out, "--format", "sharegpt", inputs=(data,)), capture_output=True, text=True, timeout=300
    )
    assert_one_line_error(result, "none of the", "records was written", "rejected:")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["records"]["written"] == 0 and manifest["records"]["rejected"] == manifest["records"]["read"]


def test_the_manifest_proves_the_rejects_file(tmp_path, job_a):
    manifest = json.loads(job_a["_manifest.json"])
    listed = manifest["rejects"]
    assert listed["bytes"] == len(job_a["_rejects.jsonl"])
    assert listed["sha256"] == hashlib.sha256(job_a["_rejects.jsonl"]).hexdigest()
