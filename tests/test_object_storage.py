"""Object storage in and out (`storage.py`, `jobs/remote.py`) against a real S3-compatible server (moto's, started
here on 127.0.0.1): `prepare s3://... --out s3://...` equals the local run on local copies, a run killed while it
works or while it publishes leaves no partial object and reruns to the same bytes, and an `--out` prefix holding
objects lossmask did not write is refused in one line."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard

from .support import DATA, FIXTURE_TOKENIZER, S3_BUCKET, s3_server

pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the S3 server")
pytestmark = pytest.mark.slow

BUCKET = S3_BUCKET
# The inputs as uploaded: (key under in/, bytes). Every reader: plain, .gz, .zst, JSON arrays, Parquet, Arrow.
INPUT_NAMES = ["openai.jsonl", "sharegpt.json", "tools.jsonl", "sub/alpaca.json.gz", "sub/pc.jsonl.zst"]
INPUT_NAMES += ["tables/text.parquet", "tables/lesson.arrow"]


def _inputs() -> dict[str, bytes]:
    files = {name: (DATA / name).read_bytes() for name in INPUT_NAMES[:3]}
    files["sub/alpaca.json.gz"] = gzip.compress((DATA / "alpaca.json").read_bytes(), mtime=0)
    files["sub/pc.jsonl.zst"] = zstandard.ZstdCompressor().compress((DATA / "prompt_completion.jsonl").read_bytes())
    text = pa.Table.from_pylist([json.loads(line) for line in (DATA / "text.jsonl").read_text().splitlines()])
    sink = pa.BufferOutputStream()
    pq.write_table(text, sink, row_group_size=7)
    files["tables/text.parquet"] = sink.getvalue().to_pybytes()
    lesson = pa.Table.from_pylist([json.loads(line) for line in (DATA / "lesson.jsonl").read_text().splitlines()])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, lesson.schema) as writer:
        writer.write_table(lesson)
    files["tables/lesson.arrow"] = sink.getvalue().to_pybytes()
    return files


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server (`support.s3_server`) with a bucket holding the inputs under in/, the AWS variables
    pointing at it (inherited by the subprocesses), and the same inputs as local copies."""
    with s3_server(tmp_path_factory.mktemp("staging")) as fs:
        local = tmp_path_factory.mktemp("local") / "in"
        for name, data in _inputs().items():
            with fs.open_output_stream(f"{BUCKET}/in/{name}", compression=None) as sink:
                sink.write(data)
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_bytes(data)
        yield fs, local


def prepare_command(inputs: list[str], out: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lossmask.cli", "prepare", *inputs, "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", out, "--shard-max-rows", "60", "--workers", "1", "-q", *extra,
    ]  # fmt: skip


def objects(fs, prefix: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path, compression=None) as stream:
                out[info.path[len(BUCKET) + len(prefix) + 2 :]] = stream.read()
    return out


def local_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def mapped(table_bytes: bytes, old: str, new: str) -> pa.Table:
    """A shard's table with its `source` column's URL prefix replaced by the local folder (the path mapping)."""
    table = pa.ipc.open_file(pa.py_buffer(table_bytes)).read_all()
    column = table.column("source").combine_chunks()
    index = table.schema.get_field_index("source")
    if pa.types.is_list(column.type):  # packed rows: one source per document
        sources = pc.replace_substring(column.values, old, new)
        return table.set_column(index, "source", pa.ListArray.from_arrays(column.offsets, sources))
    return table.set_column(index, "source", pc.replace_substring(column, old, new))


@pytest.fixture(scope="module")
def local_reference(s3, tmp_path_factory) -> tuple[dict[str, bytes], Path]:
    _, local = s3
    out = tmp_path_factory.mktemp("reference") / "out"
    inputs = [str(local / "*.json*"), str(local / "sub"), str(local / "tables")]
    subprocess.run(prepare_command(inputs, str(out)), check=True)
    return local_files(out), local


S3_INPUTS = [f"s3://{BUCKET}/in/*.json*", f"s3://{BUCKET}/in/sub", f"s3://{BUCKET}/in/tables/"]


def assert_same_output(remote: dict[str, bytes], reference: dict[str, bytes], local: Path) -> None:
    """The s3 job's output equals the local job's on local copies: shards equal as tables once `source` is mapped
    (s3://BUCKET/in/... -> LOCAL/...) and byte for byte in every other column; rejects likewise; the manifest's
    accounting and shard rows, tokens equal."""
    assert sorted(remote) == sorted(reference)
    old, new = f"s3://{BUCKET}/in/", f"{local}/"
    shards = [name for name in reference if name.endswith(".arrow")]
    assert len(shards) > 2
    for name in shards:
        assert mapped(remote[name], old, new).equals(mapped(reference[name], old, new)), name
    assert remote["_rejects.jsonl"].decode().replace(old, new) == reference["_rejects.jsonl"].decode()
    got, want = json.loads(remote["_manifest.json"]), json.loads(reference["_manifest.json"])
    assert got["records"] == want["records"] and got["totals"] == want["totals"]
    assert [s["rows"] for s in got["shards"]] == [s["rows"] for s in want["shards"]]
    # Fingerprints: the sha256 of each object's bytes is the sha256 of its local copy.
    assert [i["sha256"] for i in got["fingerprints"]["inputs"]] == [i["sha256"] for i in want["fingerprints"]["inputs"]]
    assert [i["path"].replace(old, new) for i in got["fingerprints"]["inputs"]] == [
        i["path"] for i in want["fingerprints"]["inputs"]
    ]


def test_s3_inputs_and_output_equal_the_local_run_on_local_copies(s3, local_reference):
    fs, _ = s3
    reference, local = local_reference
    subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/out-1"), check=True)
    remote = objects(fs, "out-1")
    assert_same_output(remote, reference, local)
    # Every reader was used: the manifest lists the seven inputs in order (globs sorted, folders recursed).
    names = [i["path"] for i in json.loads(remote["_manifest.json"])["fingerprints"]["inputs"]]
    assert names == [f"s3://{BUCKET}/in/{n}" for n in ["openai.jsonl", "sharegpt.json", "tools.jsonl"]] + [
        f"s3://{BUCKET}/in/{n}" for n in ["sub/alpaca.json.gz", "sub/pc.jsonl.zst"]
    ] + [f"s3://{BUCKET}/in/tables/lesson.arrow", f"s3://{BUCKET}/in/tables/text.parquet"]
    # Rerunning the same command into the same prefix is no error and changes nothing.
    subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/out-1"), check=True)
    assert objects(fs, "out-1") == remote


@pytest.mark.ray
def test_the_ray_engine_reads_and_writes_s3_like_the_local_engine(s3, local_reference):
    """`--engine ray` (a local Ray instance started by the run) on s3 inputs and output: the same output. Ray
    tasks read the units from the bucket and upload their shards to it (docs/scale.md)."""
    pytest.importorskip("ray")
    fs, _ = s3
    reference, local = local_reference
    subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/out-ray", "--engine", "ray"), check=True)
    assert_same_output(objects(fs, "out-ray"), reference, local)


@pytest.mark.ray
def test_the_ray_engine_packs_s3_inputs_into_s3_like_the_local_engine(s3, tmp_path):
    """`--pack` with Ray from and to s3, planned on the driver from sizes (`jobs/planned_pack.py`: the tasks read
    the inputs and write the rows, scatter files and packed shards in the bucket): the local engine's bytes on
    local copies, once `source` is mapped, and nothing of the rows pass (`_pack/`) left in the bucket."""
    pytest.importorskip("ray")
    fs, local = s3
    reference = tmp_path / "packed"
    local_inputs = [str(local / "*.json*"), str(local / "sub"), str(local / "tables")]
    pack = ("--pack", "256", "--shard-max-rows", "15")  # the last --shard-max-rows given counts
    subprocess.run(prepare_command(local_inputs, str(reference), *pack), check=True)
    subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/out-ray-pack", "--engine", "ray", *pack), check=True)
    packed = objects(fs, "out-ray-pack")
    assert json.loads(packed["_manifest.json"])["layout"] == "packed"
    assert_same_output(packed, local_files(reference), local)


@pytest.mark.parametrize("crash_at", ["object-uploaded:2", "shard-half-written:2", "checkpoint-saved:3"])
def test_a_killed_run_leaves_no_partial_object_and_reruns_to_the_same_output(s3, local_reference, crash_at):
    fs, _ = s3
    reference, local = local_reference
    out = f"out-killed-{crash_at.split(':')[0]}"
    env = {**os.environ, "LOSSMASK_CRASH_AT": crash_at}
    killed = subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/{out}"), env=env, check=False)
    assert killed.returncode == -9
    left = objects(fs, out)
    assert "_manifest.json" not in left
    if crash_at.startswith("object-uploaded"):
        # Publishing: the marker, then two whole objects, each exactly the one the job finished.
        marker = json.loads(left.pop("_publishing.json"))
        assert len(left) == 2
        for name, data in left.items():  # each whole: its sha256 is the one of the file the job finished
            assert hashlib.sha256(data).hexdigest() == marker["files"][name]
    else:
        assert left == {}  # nothing is uploaded before the job has finished
    subprocess.run(prepare_command(S3_INPUTS, f"s3://{BUCKET}/{out}"), check=True)
    assert_same_output(objects(fs, out), reference, local)
    assert not os.listdir(os.environ["LOSSMASK_STAGING"]), "the staging folder is deleted once published"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def test_an_s3_out_holding_unknown_objects_is_refused_in_one_line(s3):
    fs, _ = s3
    with fs.open_output_stream(f"{BUCKET}/notes/readme.txt") as sink:
        sink.write(b"mine")
    result = run_cli(*prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/notes"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "lossmask did not write (readme.txt)" in result.stderr and "--overwrite" in result.stderr
    # With --overwrite it writes beside them and leaves them alone ...
    subprocess.run(prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/notes", "--overwrite"), check=True)
    assert objects(fs, "notes")["readme.txt"] == b"mine"
    # ... but never over an unknown object of a name it would write.
    with fs.open_output_stream(f"{BUCKET}/theirs/shard-00000.arrow") as sink:
        sink.write(b"not ours")
    result = run_cli(*prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/theirs", "--overwrite"))
    assert result.returncode == 2 and "holds shard-00000.arrow, which lossmask did not write" in result.stderr
    assert objects(fs, "theirs") == {"shard-00000.arrow": b"not ours"}


def test_another_jobs_s3_output_is_replaced_only_with_overwrite(s3):
    fs, _ = s3
    subprocess.run(prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/other"), check=True)
    first = objects(fs, "other")
    result = run_cli(*prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/other", "--max-length", "64"))
    assert result.returncode == 2 and "another job's output" in result.stderr, result.stderr
    assert objects(fs, "other") == first
    subprocess.run(
        prepare_command(S3_INPUTS[:1], f"s3://{BUCKET}/other", "--max-length", "64", "--overwrite"), check=True
    )
    replaced = objects(fs, "other")
    manifest = json.loads(replaced["_manifest.json"])
    assert manifest["config"]["max_length"] == 64
    # Exactly the new job's objects: the old one's shards beyond the new count are deleted, none left over.
    assert sorted(replaced) == sorted([s["file"] for s in manifest["shards"]] + ["_manifest.json", "_rejects.jsonl"])


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (f"s3://{BUCKET}/in/*.csv", "matches no object"),
        (f"s3://{BUCKET}/nothing/", "matches no object"),
        (f"s3://{BUCKET}/in/tables/missing.jsonl", "matches no object"),
    ],
)
def test_s3_inputs_that_name_nothing_are_one_line_exit_2(s3, tmp_path, pattern, says):
    result = run_cli(*prepare_command([pattern], str(tmp_path / "out")))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr


def test_work_units_of_objects_read_as_the_whole_objects_do(s3):
    """Byte ranges of a JSONL object and row-group ranges of a Parquet object (`pipeline/units.py`), read with
    ranged GETs, give the records of the whole objects."""
    from lossmask.pipeline.read import iter_file
    from lossmask.pipeline.units import count_unit, number_units, plan_units, unit_records
    from lossmask.storage import RemoteFile

    paths = [RemoteFile(f"s3://{BUCKET}/in/openai.jsonl"), RemoteFile(f"s3://{BUCKET}/in/tables/text.parquet")]
    units = plan_units(paths, 4096)
    assert {u.kind for u in units} == {"bytes", "row_groups"} and len(units) > 20
    by_units = []
    for unit, first in number_units(units, [count_unit(u) for u in units]):
        by_units.extend((r.source, r.line, r.error, r.value) for r in unit_records(unit, first))
    whole = []
    for path in paths:
        whole.extend((r.source, r.line, r.error, r.value) for r in iter_file(path, str(path), len(whole)))
    assert by_units == whole


def test_an_unreachable_endpoint_is_one_line_exit_2(s3, tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}  # nothing listens on port 1
    result = subprocess.run(
        prepare_command(S3_INPUTS[:1], str(tmp_path / "out")), env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot list" in result.stderr and "Could not connect" in result.stderr


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("s3://no-such-bucket/out", "the bucket no-such-bucket does not exist"),
        (f"s3://{BUCKET}/in/openai.jsonl", "is an object, not a prefix"),
    ],
)
def test_an_s3_out_that_cannot_be_one_is_refused_before_any_work(s3, out, says):
    result = run_cli(*prepare_command(S3_INPUTS[:1], out))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
    assert not os.listdir(os.environ["LOSSMASK_STAGING"]), "refused before the job ran"


def test_globs_and_prefixes_name_objects_as_glob_and_folders_name_files(s3):
    """`*` within one part, `**` across parts, hidden names only by folder, sorted by key: as `read.expand_inputs`
    does for local paths."""
    from lossmask.pipeline.read import expand_inputs

    fs, _ = s3
    for key in ["g/a.jsonl", "g/b.json", "g/x/c.jsonl", "g/.hidden.jsonl", "g/x/.d/e.jsonl", "g/notes.txt"]:
        with fs.open_output_stream(f"{BUCKET}/{key}", compression=None) as sink:
            sink.write(b"{}\n")

    def keys(pattern: str) -> list[str]:
        return [str(f).removeprefix(f"s3://{BUCKET}/g/") for f in expand_inputs([f"s3://{BUCKET}/g/{pattern}"])]

    assert keys("*.jsonl") == ["a.jsonl"]
    assert keys("**/*.jsonl") == ["a.jsonl", "x/c.jsonl"]
    assert keys("[ab].json*") == ["a.jsonl", "b.json"]
    assert keys("") == [".hidden.jsonl", "a.jsonl", "b.json", "x/.d/e.jsonl", "x/c.jsonl"]
    assert keys("x") == ["x/.d/e.jsonl", "x/c.jsonl"]


def test_datasets_sampling_eval_dedup_and_packing_from_and_to_s3(s3, tmp_path):
    """`datasets:` of s3 globs, a sample, an eval fraction (published under OUT/eval/), dedup and --pack: the same
    records and totals as on the local copies."""
    from lossmask.jobs.prepare import prepare
    from lossmask.pipeline.config import PrepareConfig

    fs, local = s3

    def run(first: str, second: str, out: str) -> dict:
        datasets = [{"path": first, "sample": 50, "name": "a"}, {"path": second, "name": "b"}]
        options = {"eval": {"fraction": 0.1}, "dedup": "exact", "pack": 256, "tokenizer": str(FIXTURE_TOKENIZER)}
        return prepare(PrepareConfig.from_mapping({"datasets": datasets, "out": out, **options}))

    remote = run(f"s3://{BUCKET}/in/openai.jsonl", f"s3://{BUCKET}/in/*.json", f"s3://{BUCKET}/out-datasets")
    here = run(str(local / "openai.jsonl"), str(local / "*.json"), str(tmp_path / "out"))
    assert remote["records"] == here["records"] and remote["totals"] == here["totals"]
    assert remote["eval"]["records"] == here["eval"]["records"]
    published = objects(fs, "out-datasets")
    assert {"eval/_manifest.json", "eval/shard-00000.arrow", "_manifest.json"} <= set(published)
    assert sorted(published) == sorted(local_files(tmp_path / "out"))


def test_an_upload_that_fails_midway_leaves_no_object_under_its_final_name(s3):
    """pyarrow completes an S3 upload when its stream is closed, even after an error: so `storage` uploads under
    the hidden temporary key and moves it; the failure leaves at most that temporary."""
    from lossmask import storage

    fs, _ = s3

    def chunks():
        yield b"the first part of a shard"
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="the disk went away"):
        storage._upload(f"s3://{BUCKET}/midway/shard-00000.arrow", chunks())
    assert "shard-00000.arrow" not in objects(fs, "midway")
    assert set(objects(fs, "midway")) <= {".shard-00000.arrow.tmp"}
    storage.put_bytes(b"whole", f"s3://{BUCKET}/midway/shard-00000.arrow")
    assert objects(fs, "midway") == {"shard-00000.arrow": b"whole"}
