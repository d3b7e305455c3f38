"""Every reader of prepared shards on a bucket (`loader/shards.py` `ShardSet` over `storage`), against a real
S3-compatible server (moto's, on 127.0.0.1): a folder prepared locally and uploaded as it is reads back through
`ShardLoader("s3://...")`, `lossmask export`, `audit`, `inspect` and `train` exactly as the local folder does; a
changed object fails its sha256, and a missing manifest, bucket or server is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .support import DATA, FIXTURE_TOKENIZER, S3_BUCKET, s3_server

pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the S3 server")
pytestmark = pytest.mark.slow

URL = f"s3://{S3_BUCKET}/prepared"


def lossmask(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, which inherits the AWS variables (and PYTHONPATH) of this one."""
    command = [sys.executable, "-m", "lossmask.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=cwd)


def upload(fs, folder: Path, prefix: str, skip: tuple[str, ...] = ()) -> str:
    """Every file of a local folder as an object under `prefix`, as `aws s3 cp --recursive` would; its URL."""
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_file() and name not in skip:
            with fs.open_output_stream(f"{S3_BUCKET}/{prefix}/{name}", compression=None) as sink:
                sink.write(path.read_bytes())
    return f"s3://{S3_BUCKET}/{prefix}"


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


BAD_RECORDS = 'not json\n{"messages": []}\n{"messages": [{"role": "user", "content": "hi"}]}\n'


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """The moto server, and a folder prepared locally (`lossmask prepare`: five shards and three rejects) uploaded
    under prepared/ as it is."""
    inputs = tmp_path_factory.mktemp("inputs")
    (inputs / "bad.jsonl").write_text(BAD_RECORDS, encoding="utf-8")
    local = tmp_path_factory.mktemp("prepared") / "out"
    prepared = lossmask(
        "prepare", str(DATA / "openai.jsonl"), str(inputs / "bad.jsonl"), "--tokenizer", str(FIXTURE_TOKENIZER),
        "--out", str(local), "--shard-max-rows", "100", "-q",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    assert len(shard_names(local)) == 5 and len((local / "_rejects.jsonl").read_text().splitlines()) == 3
    with s3_server(tmp_path_factory.mktemp("staging")) as fs:
        upload(fs, local, "prepared")
        yield fs, local


def shard_names(folder: Path) -> list[str]:
    return [shard["file"] for shard in json.loads((folder / "_manifest.json").read_text())["shards"]]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shard_loader_on_s3_yields_the_batches_of_the_local_folder(bucket):
    from lossmask.loader import ShardLoader

    _, local = bucket
    for options in ({"batch_size": 8, "seed": 3}, {"batch_size": 2, "pack_length": 256, "shuffle": False}):
        remote, here = ShardLoader(URL, verify=True, **options), ShardLoader(local, **options)
        assert remote.num_rows == here.num_rows == 401
        got, want = list(remote), list(here)
        assert len(got) == len(want) > 10
        for a, b in zip(got, want, strict=True):
            assert sorted(a) == sorted(b)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        # A checkpoint of one continues the other: the state names shards by file name, rows and sha256.
        assert remote.state_dict() == here.state_dict()


def test_export_of_an_s3_folder_equals_the_export_of_the_local_folder(bucket, tmp_path):
    _, local = bucket
    for target in ("hf", "numpy"):
        remote, here = tmp_path / f"remote-{target}", tmp_path / f"local-{target}"
        result = lossmask("export", URL, "--to", target, str(remote))
        assert result.returncode == 0, result.stderr
        assert lossmask("export", str(local), "--to", target, str(here), "-q").returncode == 0
        got, want = files_of(remote), files_of(here)
        sidecar = "_export.json" if target == "hf" else "header.json"
        got_info, want_info = json.loads(got.pop(sidecar)), json.loads(want.pop(sidecar))
        assert got == want and len(got) > 1  # every data file byte for byte
        # The sidecar names the folder read (the URL) and the sha256 of its manifest, the same object's.
        assert got_info["source"].pop("shards") == URL and want_info["source"].pop("shards") == str(local)
        assert got_info == want_info and len(got_info["source"]["manifest_sha256"]) == 64


def test_audit_of_an_s3_folder_gives_the_report_of_the_local_folder(bucket):
    _, local = bucket
    remote = lossmask("audit", URL, "--json")
    here = lossmask("audit", str(local), "--json")
    assert remote.returncode == here.returncode == 0, remote.stderr
    got, want = json.loads(remote.stdout), json.loads(here.stdout)
    assert got.pop("target") == URL and want.pop("target") == str(local)
    assert got == want
    assert got["records"]["written"] == 401 and got["records"]["rejected"] == 3 and got["statistics"]
    # The terminal report too, but for the folder's name and the time it took.
    text = lossmask("audit", URL, "--show", "2").stdout.replace(URL, "FOLDER")
    local_text = lossmask("audit", str(local), "--show", "2").stdout.replace(str(local), "FOLDER")
    assert _untimed(text) == _untimed(local_text) and "FOLDER" in text


def _untimed(report: str) -> list[str]:
    return [line for line in report.splitlines() if " s " not in line and not line.rstrip().endswith(" s")]


def test_audit_of_shards_without_a_manifest_on_s3(bucket):
    """A prefix of shards alone (`ShardSet.unlisted`, found by one listing) is audited as a local one is."""
    fs, local = bucket
    url = upload(fs, local, "unlisted", skip=("_manifest.json",))
    copy = local.parent / "unlisted"
    copy.mkdir(exist_ok=True)
    for name in local.glob("shard-*.arrow"):
        (copy / name.name).write_bytes(name.read_bytes())
    got, want = (json.loads(lossmask("audit", folder, "--json").stdout) for folder in (url, str(copy)))
    assert [note.replace(url, "F") for note in got.pop("notes")] == [
        n.replace(str(copy), "F") for n in want.pop("notes")
    ]
    assert got.pop("target") == url and want.pop("target") == str(copy)
    assert got == want and got["statistics"]


def test_inspect_of_an_s3_folder_shows_what_the_local_folder_shows(bucket):
    _, local = bucket
    remote = lossmask("inspect", URL, "--verify", "--rows", "2", "--start", "150")
    here = lossmask("inspect", str(local), "--verify", "--rows", "2", "--start", "150")
    assert remote.returncode == 0, remote.stderr
    assert URL in remote.stdout and "rows 150..151 of 401" in remote.stdout
    assert remote.stdout.replace(URL, "FOLDER") == here.stdout.replace(str(local), "FOLDER")


def test_train_and_explain_on_an_s3_folder_give_what_the_local_folder_gives(bucket, tmp_path):
    _, local = bucket
    tiny = ["--steps", "3", "--batch-size", "4", "--seq-len", "64", "--layers", "1", "--d-model", "16", "-q"]
    remote = lossmask("train", URL, "--out", str(tmp_path / "remote"), *tiny)
    assert remote.returncode == 0, remote.stderr
    assert lossmask("train", str(local), "--out", str(tmp_path / "local"), *tiny).returncode == 0

    def steps(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]

    assert steps(tmp_path / "remote") == steps(tmp_path / "local") and len(steps(tmp_path / "local")) == 3
    with np.load(tmp_path / "remote" / "model.npz") as got, np.load(tmp_path / "local" / "model.npz") as want:
        assert sorted(got.files) == sorted(want.files)
        for name in got.files:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert json.loads((tmp_path / "remote" / "run.json").read_text())["shards"] == URL
    # `lossmask explain` reads its row from the bucket as well: the same table for the trained model.
    explained = [lossmask("explain", folder, "--row", "7", "--run", str(tmp_path / "local")) for folder in (URL, local)]
    assert explained[0].returncode == 0 and explained[0].stdout == explained[1].stdout, explained[0].stderr


def test_a_changed_shard_object_fails_its_sha256_in_one_line(bucket, tmp_path):
    from lossmask.errors import SetupError
    from lossmask.loader import ShardLoader

    fs, local = bucket
    url = upload(fs, local, "changed")
    name = shard_names(local)[2]
    data = bytearray((local / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed in a record batch's body
    with fs.open_output_stream(f"{S3_BUCKET}/changed/{name}", compression=None) as sink:
        sink.write(bytes(data))
    said = f"shard {url}/{name} does not match the sha256 in _manifest.json"
    assert said in one_line_exit_2(lossmask("export", url, "--to", "hf", str(tmp_path / "out")))
    assert said in one_line_exit_2(lossmask("inspect", url, "--verify"))
    assert said in one_line_exit_2(lossmask("audit", url))
    with pytest.raises(SetupError, match="does not match the sha256"):
        ShardLoader(url, batch_size=4, verify=True)


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{url}"],
        ["export", "{url}", "--to", "hf", "{out}"],
        ["train", "{url}", "--out", "{out}", "--steps", "1"],
    ],
)
def test_an_s3_folder_without_a_manifest_is_one_line_exit_2(bucket, tmp_path, command):
    fs, _ = bucket
    with fs.open_output_stream(f"{S3_BUCKET}/no-manifest/notes.txt") as sink:
        sink.write(b"not a prepared folder")
    for url, says in [
        (f"s3://{S3_BUCKET}/no-manifest", f"s3://{S3_BUCKET}/no-manifest has no _manifest.json"),
        (f"s3://{S3_BUCKET}/nothing-here/", f"s3://{S3_BUCKET}/nothing-here has no _manifest.json"),
        ("s3://no-such-bucket/prepared", "the bucket no-such-bucket does not exist"),
    ]:
        args = [a.format(url=url, out=tmp_path / "out") for a in command]
        assert says in one_line_exit_2(lossmask(*args))
    assert not (tmp_path / "out").exists()


def test_a_shard_listed_but_not_in_the_bucket_and_an_unreachable_server_are_one_line(bucket):
    fs, local = bucket
    name = shard_names(local)[1]
    url = upload(fs, local, "incomplete", skip=(name,))
    said = f"shard {url}/{name} is listed in _manifest.json but missing"
    assert said in one_line_exit_2(lossmask("inspect", url))
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}  # nothing listens on port 1
    assert "Could not connect" in one_line_exit_2(lossmask("inspect", URL, env=env))
    assert "Could not connect" in one_line_exit_2(lossmask("audit", URL, env=env))


def test_outputs_stay_local_an_s3_out_is_refused_before_reading(bucket, tmp_path):
    """Run where a URL taken for a local path would show: it would be a folder named `s3:` here."""
    for args in (["export", URL, "--to", "hf", f"s3://{S3_BUCKET}/exported"], ["train", URL, "--out", f"{URL}-run"]):
        stderr = one_line_exit_2(lossmask(*args, cwd=tmp_path))
        assert "writes local files only" in stderr and "copy it up" in stderr, stderr
    stderr = one_line_exit_2(lossmask("audit", URL, "--html", f"s3://{S3_BUCKET}/report.html", cwd=tmp_path))
    assert "--html" in stderr and "writes local files only" in stderr
    assert list(tmp_path.iterdir()) == []
