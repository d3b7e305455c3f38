"""Unit jobs on Ray (`engines/ray_units.py`), with faults: a Ray worker killed in the middle of its unit, a driver
killed between units, an object-store `--out` written by the tasks themselves; and a driver that reads no input
(its read bytes and peak RSS on two inputs, one 4x the other).

Each kill is proven to have landed where it says: the worker is killed while it holds its unit's shard open as a
temporary (found in /proc), and the driver by the crash hook after a checkpoint that lists some units, not all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lossmask.jobs.checkpoint import CHECKPOINT_NAME

from .support import FIXTURE_TOKENIZER, write_distinct_conversations
from .test_object_storage import BUCKET, objects, s3  # noqa: F401 - s3 is a fixture used here

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

UNIT_BYTES = 300_000  # ~1,150 conversations: long enough to catch a task in the middle of one


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """~1.9 MB of distinct conversations (seven units), with a few bad lines among them."""
    return write_distinct_conversations(
        tmp_path_factory.mktemp("big") / "big.jsonl", 20, "{broken\n", lambda i: i == 200
    )


def command(inputs: list[str], out: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", *inputs, "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", out, "--unit-bytes", str(UNIT_BYTES), "-q", *extra,
    ]  # fmt: skip


def tree(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def reference(big, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(command([str(big)], str(out), "--workers", "1"), check=True)
    return tree(out)


def _writing_worker(marker: str, shard: str = "/.shard-u") -> tuple[int, str] | None:
    """A process holding open a temporary shard (a unit's, or with `shard="/.shard-0"` a packed one) whose path
    contains `marker`: (its pid, the file)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
                if marker in target and shard in target and target.endswith(".arrow.tmp"):
                    return int(entry), target
        except OSError:  # gone, or not ours to look at
            continue
    return None


def kill_a_worker_mid_unit(run: subprocess.Popen, marker: str, shard: str = "/.shard-u") -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        found = _writing_worker(marker, shard)
        if found is not None:
            os.kill(found[0], signal.SIGKILL)
            return found
        time.sleep(0.01)
    raise AssertionError("no Ray worker was seen writing a unit: the run ended first")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0


def test_a_worker_killed_mid_unit_is_retried_and_the_output_is_the_same(big, reference, tmp_path):
    out = tmp_path / "out"
    run = subprocess.Popen(command([str(big)], str(out), "--engine", "ray"), stderr=subprocess.PIPE, text=True)
    pid, temporary = kill_a_worker_mid_unit(run, str(out))
    unit_shard = Path(temporary).name[1 : -len(".tmp")]
    assert unit_shard in reference  # a real unit's shard, being written when its worker died
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert _gone(pid)
    assert tree(out) == reference  # retried by Ray, whole: nothing partial, nothing left over


@pytest.fixture(scope="module")
def in_bucket(s3, big) -> tuple[list[str], dict[str, bytes]]:  # noqa: F811
    """The big input in the bucket, and what an uninterrupted Ray run writes from it to the bucket."""
    fs, _ = s3
    with fs.open_output_stream(f"{BUCKET}/in-big/big.jsonl") as sink:
        sink.write(big.read_bytes())
    inputs = [f"s3://{BUCKET}/in-big/big.jsonl"]
    subprocess.run(command(inputs, f"s3://{BUCKET}/whole", "--engine", "ray"), check=True)
    return inputs, objects(fs, "whole")


def test_a_worker_killed_mid_unit_leaves_no_partial_object_in_the_bucket(s3, in_bucket):  # noqa: F811
    fs, _ = s3
    inputs, whole = in_bucket
    run = subprocess.Popen(
        command(inputs, f"s3://{BUCKET}/worker-killed", "--engine", "ray"), stderr=subprocess.PIPE, text=True
    )
    pid, _ = kill_a_worker_mid_unit(run, "lossmask-unit-")  # a task's scratch folder: it uploads whole files
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert _gone(pid)
    assert objects(fs, "worker-killed") == whole  # no temporary, part or checkpoint left; every object whole


def test_a_killed_driver_resumes_from_the_buckets_checkpoint(s3, in_bucket):  # noqa: F811
    """Ray tasks write to the bucket, the driver's staging folder holds no data; killed after two units (save 1
    is the counting pass), the rerun keeps the finished unit whose objects are intact (checked by Ray tasks),
    writes again the one whose shard was changed, and gives what an uninterrupted run gives."""
    fs, _ = s3
    inputs, whole = in_bucket
    url = f"s3://{BUCKET}/driver-killed"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:3", "LOSSMASK_CHECKPOINT_SECONDS": "0"}
    killed = subprocess.run(command(inputs, url, "--engine", "ray"), env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    left = objects(fs, "driver-killed")
    checkpoint = json.loads(left[CHECKPOINT_NAME])
    assert len(checkpoint["units"]) == 2 < checkpoint["unit_total"]
    finished = [s["file"] for u in checkpoint["units"].values() for s in u["shards"]]
    assert finished and all(left[name] == whole[name] for name in finished)
    staging = Path(os.environ["LOSSMASK_STAGING"])
    assert not [p for p in staging.rglob("*") if p.name.startswith(("shard-", "_rejects"))]  # no data there
    changed, *untouched = finished  # one finished unit's shard changed behind the job's back: it is written again
    with fs.open_output_stream(f"{BUCKET}/driver-killed/{changed}") as sink:
        sink.write(b"not the shard any more")
    kept = {name: fs.get_file_info(f"{BUCKET}/driver-killed/{name}").mtime for name in untouched}
    subprocess.run(command(inputs, url, "--engine", "ray"), check=True)
    assert {name: fs.get_file_info(f"{BUCKET}/driver-killed/{name}").mtime for name in untouched} == kept
    assert objects(fs, "driver-killed") == whole


COUNT_SHA256 = """
import sys
from lossmask import storage
from lossmask.cli import main
streamed = []
real = storage.sha256
def counted(file):
    streamed.append(str(file))
    return real(file)
storage.sha256 = counted
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("streamed", sum("/shard-" in url for url in streamed), file=sys.stderr)
"""


def test_rerunning_a_finished_bucket_job_streams_none_of_its_shards_through_the_driver(s3, in_bucket):  # noqa: F811
    """The rerun proves the finished job's objects its own (its manifest lists their sha256) in Ray tasks: the
    driver streams no shard to hash it, and the output is the same."""
    fs, _ = s3
    inputs, whole = in_bucket
    assert sum(name.startswith("shard-") for name in whole) > 1
    run = subprocess.run(
        [sys.executable, "-c", COUNT_SHA256, *command(inputs, f"s3://{BUCKET}/whole", "--engine", "ray")[3:]],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "streamed 0"
    assert objects(fs, "whole") == whole


PROBE = """
import json, resource, sys
from lossmask.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rchar": int(io["rchar"]), "peak_kb": peak}), file=sys.stderr)
"""


def _driver(inputs: list[str], out: Path) -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *command(inputs, str(out), "--engine", "ray")[3:]],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stderr.strip().splitlines()[-1])


def test_the_driver_reads_no_input_and_its_memory_does_not_grow_with_it(big, tmp_path):
    """Two inputs, one four times the other: the driver reads a few kilobytes around each unit's cut, not the
    input (its read bytes grow by far less than the 4x input's extra bytes), and its peak RSS stays within
    1.2x. The tasks read and write everything."""
    small = [str(big)]
    large_folder = tmp_path / "large"
    large_folder.mkdir()
    for k in range(4):
        (large_folder / f"part{k}.jsonl").write_bytes(big.read_bytes())
    large = [str(large_folder)]
    one = _driver(small, tmp_path / "one")
    four = _driver(large, tmp_path / "four")
    extra_input = 3 * big.stat().st_size
    assert four["rchar"] - one["rchar"] < extra_input / 10, (one, four)
    assert four["peak_kb"] <= 1.2 * one["peak_kb"], (one, four)
    manifest = json.loads((tmp_path / "four" / "_manifest.json").read_text())
    assert (
        manifest["records"]["read"]
        == 4 * json.loads((tmp_path / "one" / "_manifest.json").read_text())["records"]["read"]
    )


# A planned --pack (`jobs/planned_pack.py`) over the same input: several rows shards, a dataset-wide window.
PACK = ("--pack", "256", "--pack-window", "0", "--shard-max-rows", "40")


@pytest.fixture(scope="module")
def packed_reference(big, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("packed-reference") / "out"
    subprocess.run(command([str(big)], str(out), "--workers", "1", *PACK), check=True)
    return tree(out)


def test_a_planned_pack_killed_mid_gather_resumes_to_the_local_engines_bytes(big, packed_reference, tmp_path):
    """The driver is killed after the checkpoint that lists two packed shards (of many): every scatter file is
    written and listed, the rerun checks them in tasks, writes only the missing packed shards, and the output is
    the local engine's, with the rows pass (`_pack/`) removed."""
    out = tmp_path / "out"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "packed-shard-checkpointed:2", "LOSSMASK_CHECKPOINT_SECONDS": "0"}
    killed = subprocess.run(command([str(big)], str(out), "--engine", "ray", *PACK), env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr
    checkpoint = json.loads((out / CHECKPOINT_NAME).read_text())
    assert len(checkpoint["shards"]) == 2 < checkpoint["packed_total"]
    rows = json.loads((out / "_pack" / "_manifest.json").read_text())
    assert len(rows["shards"]) > 1 and sorted(checkpoint["scattered"]) == sorted(
        "pack-" + s["file"] for s in rows["shards"]
    )
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in checkpoint["shards"]}
    subprocess.run(command([str(big)], str(out), "--engine", "ray", *PACK), check=True)
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not written again
    assert tree(out) == packed_reference
    assert not (out / "_pack").exists()


def test_a_worker_killed_mid_gather_is_retried_and_the_output_is_the_same(big, packed_reference, tmp_path):
    out = tmp_path / "out"
    run = subprocess.Popen(command([str(big)], str(out), "--engine", "ray", *PACK), stderr=subprocess.PIPE, text=True)
    pid, temporary = kill_a_worker_mid_unit(run, str(out), shard="/.shard-0")
    assert Path(temporary).name[1 : -len(".tmp")] in packed_reference  # a packed shard, being written
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert _gone(pid)
    assert tree(out) == packed_reference


def test_a_planned_pack_killed_in_the_bucket_resumes_to_the_same_objects(s3, in_bucket, packed_reference):  # noqa: F811
    """On an object-store `--out` the checkpoint, scatter files and packed shards are in the bucket; killed mid
    gather, the rerun (its finished shards checked in tasks) gives the local engine's shards (but for `source`,
    which names the bucket's object) and nothing else."""
    fs, _ = s3
    inputs, _ = in_bucket
    url = f"s3://{BUCKET}/pack-killed"
    env = {**os.environ, "LOSSMASK_CRASH_AT": "packed-shard-checkpointed:2", "LOSSMASK_CHECKPOINT_SECONDS": "0"}
    killed = subprocess.run(command(inputs, url, "--engine", "ray", *PACK), env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    left = objects(fs, "pack-killed")
    assert any(name.startswith("_pack/pack-shard-u") for name in left)  # the scatter files are in the bucket
    finished = [s["file"] for s in json.loads(left[CHECKPOINT_NAME])["shards"]]
    assert len(finished) == 2
    kept = {name: fs.get_file_info(f"{BUCKET}/pack-killed/{name}").mtime for name in finished}
    subprocess.run(command(inputs, url, "--engine", "ray", *PACK), check=True)
    assert {name: fs.get_file_info(f"{BUCKET}/pack-killed/{name}").mtime for name in finished} == kept
    got = objects(fs, "pack-killed")
    assert sorted(got) == sorted(packed_reference)  # the local engine's files, nothing more (no `_pack/`)
    counts = ("file", "rows", "tokens", "loss_tokens")
    listed = [{k: s[k] for k in counts} for s in json.loads(got["_manifest.json"])["shards"]]
    assert listed == [{k: s[k] for k in counts} for s in json.loads(packed_reference["_manifest.json"])["shards"]]
    for name in (n for n in got if n.startswith("shard-")):  # the same rows but for `source`, a URL here
        assert _without_source(got[name]) == _without_source(packed_reference[name])


def _without_source(shard: bytes):
    import pyarrow as pa

    table = pa.ipc.open_file(pa.BufferReader(shard)).read_all()
    return table.drop_columns(["source"])
