"""A job stopped from outside (SIGTERM, SIGINT, kill -9, a full disk, a read-only folder) says so in one line,
exits with a code that means it, leaves no process behind, and the same command then finishes it byte for byte.

Each test proves its event landed mid-run: the signal is sent only once a shard is checkpointed, and the run
must not have written its manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .support import DATA, FIXTURE_TOKENIZER, FIXTURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """~3200 records, some bad, so that a run lasts long enough to be stopped and rejects must survive it."""
    lines = (DATA / "openai.jsonl").read_text().splitlines() + (
        FIXTURES / "bad" / "malformed.jsonl"
    ).read_text().splitlines()
    path = tmp_path_factory.mktemp("input") / "big.jsonl"
    path.write_text("\n".join(lines * 8) + "\n")
    return path


def command(big_input: Path, out: Path, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", str(big_input), "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", str(out), "--workers", str(workers), "--shard-max-rows", "150", "--batch-size", "32", "-q",
    ]  # fmt: skip


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def reference(big_input, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(command(big_input, out), check=True, timeout=600)
    return outputs(out)


def wait_for_a_checkpointed_shard(out: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be stopped"
        try:
            if json.loads((out / "_checkpoint.json").read_text())["shards"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError("no shard was checkpointed in time")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_job_in_one_line_and_the_same_command_finishes_it(
    big_input, reference, tmp_path, signum, code
):
    out = tmp_path / "out"
    process = subprocess.Popen(command(big_input, out), stderr=subprocess.PIPE, text=True)
    wait_for_a_checkpointed_shard(out, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines() == [
        f"lossmask: stopped by {signal.Signals(signum).name}; finished shards are kept: rerun the same command to "
        "resume"
    ]
    assert not (out / "_manifest.json").exists(), "the job had finished: the signal landed too late"
    assert json.loads((out / "_checkpoint.json").read_text())["shards"]
    subprocess.run(command(big_input, out), check=True, timeout=600)
    assert outputs(out) == reference


# The CLI with one change: when the job stops, a result is left half-sent in the pool's result pipe (its header
# and part of its bytes, under the queue's write lock so that it starts where a message does), as a worker
# killed by `_stop_now` in the middle of sending a batch's result leaves it. The pool's manager thread then waits
# in recv() for bytes no one will send, and the interpreter joins that thread at exit.
HALF_SENT_RESULT = """
import os, struct, sys
from concurrent.futures import ProcessPoolExecutor
from lossmask.cli import main
from lossmask.engines import local

class HalfSentResult(ProcessPoolExecutor):
    def shutdown(self, wait=True, **kwargs):
        if not wait:  # stopping (`_stop_now`), not finishing
            results = self._result_queue
            with results._wlock:
                os.write(results._writer.fileno(), struct.pack("!i", 1 << 20) + bytes(1000))
        super().shutdown(wait, **kwargs)

local.ProcessPoolExecutor = HalfSentResult
main(sys.argv[1:], prog_name="lossmask")
"""


def test_a_signal_stops_the_job_even_with_a_worker_killed_in_the_middle_of_sending_its_result(big_input, tmp_path):
    out = tmp_path / "out"
    cli = command(big_input, out)
    arguments = cli[cli.index("prepare") :]
    process = subprocess.Popen([sys.executable, "-c", HALF_SENT_RESULT, *arguments], stderr=subprocess.PIPE, text=True)
    wait_for_a_checkpointed_shard(out, process)
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()  # its forkserver and resource tracker follow it (the workers are gone already)
        _, stderr = process.communicate()
        raise AssertionError(f"stopped by SIGTERM, the job had not exited 20 s later: {stderr!r}") from None
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == [
        "lossmask: stopped by SIGTERM; finished shards are kept: rerun the same command to resume"
    ]


WORKER_DIED = (
    "lossmask: error: a worker process died, killed by signal 9 (SIGKILL: often the out-of-memory killer; try "
    "fewer --workers); finished shards are kept: rerun the same command to resume"
)


def test_a_worker_killed_mid_run_is_one_line_and_the_same_command_finishes_it(big_input, reference, tmp_path):
    """As the out-of-memory killer would: one worker gets SIGKILL once a shard is checkpointed."""
    out = tmp_path / "out"
    process = subprocess.Popen(command(big_input, out), stderr=subprocess.PIPE, text=True)
    wait_for_a_checkpointed_shard(out, process)
    workers = [c for c in psutil.Process(process.pid).children(recursive=True) if "forkserver" in " ".join(c.cmdline())]
    worker = next(c for c in workers if c.ppid() != process.pid)  # a worker is the forkserver's child
    worker.kill()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines() == [WORKER_DIED]
    assert not (out / "_manifest.json").exists()
    subprocess.run(command(big_input, out), check=True, timeout=600)
    assert outputs(out) == reference


# The CLI with one change: after its 20th batch, the pool gets a result half sent into its result pipe and one of
# its workers is killed, as when a worker dies in the middle of sending a result: the manager thread then waits
# in recv() for bytes no one will send, and the pool never reports the dead worker.
DIED_MID_SEND = """
import os, signal, struct, sys
from concurrent.futures import ProcessPoolExecutor
from lossmask.cli import main
from lossmask.engines import local

class DiesMidSend(ProcessPoolExecutor):
    submitted = 0

    def submit(self, *args, **kwargs):
        DiesMidSend.submitted += 1
        if DiesMidSend.submitted == 20:
            results = self._result_queue
            with results._wlock:
                os.write(results._writer.fileno(), struct.pack("!i", 1 << 20) + bytes(1000))
            os.kill(next(iter(self._processes)), signal.SIGKILL)
        return super().submit(*args, **kwargs)

local.ProcessPoolExecutor = DiesMidSend
main(sys.argv[1:], prog_name="lossmask")
"""


# The CLI with one change: at its 20th batch, once the batches in flight are done (so that no worker is in the
# middle of sending a result), a worker is killed and the pool notices (it is broken) before the batch is
# submitted, so that the submit itself fails, as it can when the pool notices first.
BROKEN_BEFORE_SUBMIT = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from lossmask.cli import main
from lossmask.engines import local

class BrokenBeforeSubmit(ProcessPoolExecutor):
    submitted = 0

    def submit(self, *args, **kwargs):
        BrokenBeforeSubmit.submitted += 1
        if BrokenBeforeSubmit.submitted == 20:
            for item in list(self._pending_work_items.values()):
                item.future.exception()  # waits until it is done
            os.kill(next(iter(self._processes)), signal.SIGKILL)
            while not self._broken:
                time.sleep(0.01)
        return super().submit(*args, **kwargs)

local.ProcessPoolExecutor = BrokenBeforeSubmit
main(sys.argv[1:], prog_name="lossmask")
"""


@pytest.mark.parametrize("script", [DIED_MID_SEND, BROKEN_BEFORE_SUBMIT], ids=["mid-send", "broken-before-submit"])
def test_a_worker_that_dies_in_the_middle_of_sending_its_result_does_not_hang_the_job(big_input, tmp_path, script):
    out = tmp_path / "out"
    cli = command(big_input, out)
    arguments = cli[cli.index("prepare") :]
    process = subprocess.Popen([sys.executable, "-c", script, *arguments], stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"a worker died mid-send; the job had not exited 60 s later: {stderr!r}") from None
    assert process.returncode == 2, stderr
    assert stderr.strip().splitlines() == [WORKER_DIED]
    assert not (out / "_manifest.json").exists()


def test_no_worker_outlives_a_main_process_killed_by_sigkill(big_input, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(command(big_input, out), stderr=subprocess.DEVNULL)
    wait_for_a_checkpointed_shard(out, process)
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert len(descendants) >= 3, descendants  # the forkserver and two workers at least (and the resource tracker)
    process.kill()
    process.wait(30)
    time.sleep(5)
    alive = []
    for child in descendants:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    for child in alive:  # do not leave them to the next test either
        child.kill()
    assert not alive, f"still running 5 s after kill -9 of the main process: {alive}"


def test_a_full_disk_simulated_is_one_line_and_resumable(big_input, reference, tmp_path):
    out = tmp_path / "out"
    full = subprocess.run(
        command(big_input, out),
        env={**os.environ, "LOSSMASK_CRASH_AT": "shard-half-written:10:enospc"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert full.returncode == 2, full.stderr
    assert full.stderr.strip().splitlines() == [
        f"lossmask: error: no space left writing {out}: free some, then rerun the same command to resume"
    ]
    assert json.loads((out / "_checkpoint.json").read_text())["shards"]
    subprocess.run(command(big_input, out), check=True, timeout=600)
    assert outputs(out) == reference


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 200 kB tmpfs where the machine lets a test mount one (root in a container), else skip."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}): the simulated ENOSPC test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_is_one_line_and_resumable_once_there_is_space(big_input, reference, small_tmpfs):
    out = small_tmpfs / "out"
    full = subprocess.run(command(big_input, out), capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmask: error: no space left writing "), full.stderr
    assert "Traceback" not in full.stderr
    assert sum(len(data) for data in reference.values()) > 200 << 10, "the output fits: no disk was filled"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    subprocess.run(command(big_input, out), check=True, timeout=600)
    assert outputs(out) == reference


def test_a_read_only_out_is_one_line(big_input, small_tmpfs):
    out = small_tmpfs / "out"
    out.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    result = subprocess.run(command(big_input, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lossmask: error: cannot write to --out {out}"), result.stderr
    assert "Read-only file system" in lines[0]
