"""`datasets:`: several inputs of their own formats, sampled, interleaved, an eval split, exact dedup, and inputs
users already have (save_to_disk folders, Hub ids offline). Every count is exact and every output reproducible."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from click.testing import CliRunner
from lossmask.cli import main
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig

from .support import DATA, FIXTURE_TOKENIZER, read_rejects, write_jsonl

OPENAI = DATA / "openai.jsonl"  # 401 records


def sharegpt_renamed(tmp_path: Path, count: int = 40) -> Path:
    """ShareGPT records under a renamed field (`dialog` for `conversations`), as one JSON array."""
    records = json.loads((DATA / "sharegpt.json").read_text())[:count]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"dialog": r["conversations"]} for r in records], indent=1))
    return path


def run(tmp_path: Path, name: str, **options) -> tuple[dict, Path]:
    out = tmp_path / name
    config = PrepareConfig.from_mapping({"tokenizer": str(FIXTURE_TOKENIZER), "out": str(out), **options})
    return prepare(config), out


def rows(out: Path) -> list[dict]:
    """The rows of one shard set (not those of OUT/eval)."""
    files = sorted(str(p) for p in out.glob("*.arrow"))
    return ds.dataset(files, format="arrow").to_table().to_pylist() if files else []


def digests(out: Path) -> dict[str, str]:
    files = [p for p in sorted(out.rglob("*")) if p.suffix == ".arrow" or p.name == "_rejects.jsonl"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def by_dataset(out: Path, chats: Path) -> Counter:
    return Counter("sg" if r["source"].startswith(str(chats)) else "oai" for r in rows(out))


def mixture(chats: Path) -> dict:
    return {
        "seed": 7,
        "datasets": [
            {"name": "oai", "path": str(OPENAI), "format": "openai", "sample": 0.5},
            {
                "name": "sg",
                "path": str(chats),
                "format": "sharegpt",
                "fields": {"conversations": "dialog"},
                "sample": 80,
            },
        ],
        "eval": {"fraction": 0.1},
    }


def test_two_datasets_sampled_with_an_eval_split(tmp_path):
    chats = sharegpt_renamed(tmp_path)
    manifest, out = run(tmp_path, "a", **mixture(chats), workers=1)
    # eval: 10% of each dataset held out first (40 of 401, 4 of 40); train: the sample of the rest, 0.5 of 361
    # (180.5, rounded half up) and 80 of 36 (two whole passes and 8 more).
    expected_train, expected_eval = {"oai": 181, "sg": 80}, {"oai": 40, "sg": 4}
    train = {d["name"]: d for d in manifest["datasets"]}
    evaluation = json.loads((out / "eval" / "_manifest.json").read_text())
    held = {d["name"]: d for d in evaluation["datasets"]}
    for name in ("oai", "sg"):
        assert train[name]["sampled"] == train[name]["read"] == train[name]["written"] == expected_train[name]
        assert held[name]["sampled"] == held[name]["written"] == expected_eval[name]
        assert train[name]["fingerprint"] == held[name]["fingerprint"]
    assert train["sg"]["available"] == 40 and train["oai"]["available"] == 401
    assert by_dataset(out, chats) == expected_train and by_dataset(out / "eval", chats) == expected_eval
    assert manifest["records"]["read"] == 261 and manifest["eval"]["records"]["read"] == 44

    train_sources = Counter(r["source"] for r in rows(out))
    eval_sources = {r["source"] for r in rows(out / "eval")}
    assert not set(train_sources) & eval_sources  # no record in both
    sg_counts = Counter(n for s, n in train_sources.items() if s.startswith(str(chats)))
    assert sg_counts == {2: 28, 3: 8}  # 36 records twice, 8 of them a third time
    # Interleaved: the small dataset is spread over the stream, not appended.
    order = ["sg" if r["source"].startswith(str(chats)) else "oai" for r in rows(out)]
    assert "sg" in order[:10] and "oai" in order[-10:]

    _, out_b = run(tmp_path, "b", **mixture(chats), workers=1)
    _, out_c = run(tmp_path, "c", **mixture(chats), workers=2, batch_size=8)
    assert digests(out) == digests(out_b) == digests(out_c)
    _, out_d = run(tmp_path, "d", **{**mixture(chats), "seed": 8}, workers=1)
    assert digests(out) != digests(out_d)


def test_eval_count_is_shared_out_by_size(tmp_path):
    chats = sharegpt_renamed(tmp_path, 10)
    small = write_jsonl(tmp_path / "small.jsonl", [json.loads(line) for line in OPENAI.read_text().splitlines()[:30]])
    options = {"datasets": [{"path": str(small)}, {"path": str(chats), "fields": {"conversations": "dialog"}}]}
    manifest, out = run(tmp_path, "o", **options, eval={"count": 8})
    held = {d["name"]: d["written"] for d in json.loads((out / "eval" / "_manifest.json").read_text())["datasets"]}
    assert held == {"small": 6, "chats": 2}  # 8 x 30/40 and 8 x 10/40
    assert {d["name"]: d["written"] for d in manifest["datasets"]} == {"small": 24, "chats": 8}
    before = digests(out)
    run(tmp_path, "o", **options, eval={"count": 8})  # rerun into the same --out: OUT/eval is the job's own
    assert digests(out) == before


def test_dedup_within_and_across_datasets(tmp_path):
    one = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    two = {"messages": [{"role": "user", "content": "Two?"}, {"role": "assistant", "content": "Yes, two."}]}
    three = {"messages": [{"role": "user", "content": "Three?"}, {"role": "assistant", "content": "Three."}]}
    first = write_jsonl(tmp_path / "first.jsonl", [one, two, one, three, one])
    (tmp_path / "first.jsonl").write_text((tmp_path / "first.jsonl").read_text() + "{not json\n")
    # the same conversations in ShareGPT: `two` again (a duplicate across datasets, whatever the format), one new
    second = tmp_path / "second.json"
    second.write_text(
        json.dumps(
            [
                {"conversations": [{"from": "human", "value": "Two?"}, {"from": "gpt", "value": "Yes, two."}]},
                {"conversations": [{"from": "human", "value": "Four?"}, {"from": "gpt", "value": "Four."}]},
            ]
        )
    )
    options = {"datasets": [{"name": "first", "path": str(first)}, {"name": "second", "path": str(second)}]}
    manifest, out = run(tmp_path, "o", **options, dedup="exact")
    per = {d["name"]: d for d in manifest["datasets"]}
    assert per["first"]["by_reason"]["dropped"] == {"duplicate": 2}
    assert per["first"]["by_reason"]["rejected"] == {"invalid_json": 1}
    assert per["first"]["written"] == 3 and per["second"]["written"] == 1
    assert per["second"]["by_reason"]["dropped"] == {"duplicate": 1}
    assert manifest["records"]["by_reason"]["dropped"] == {"duplicate": 3}
    assert len(rows(out)) == 4
    rejects = read_rejects(out)
    assert Counter((r["dataset"], r["reason"]) for r in rejects) == {
        ("first", "duplicate"): 2,
        ("first", "invalid_json"): 1,
        ("second", "duplicate"): 1,
    }
    plain, _ = run(tmp_path, "p", **options)
    assert plain["records"]["written"] == 7
    # The passes `sample` makes over a dataset repeat its records: no duplicates of themselves.
    oversampled, _ = run(tmp_path, "s", datasets=[{"path": str(second), "sample": 6}], dedup="exact")
    assert oversampled["records"]["written"] == 6


def test_per_dataset_options_reach_the_records(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}
    with_system = {"messages": [{"role": "system", "content": "Old."}, *chat["messages"]]}
    data = write_jsonl(tmp_path / "d.jsonl", [chat, with_system])
    entries = [
        {"name": "plain", "path": str(data)},
        {"name": "users", "path": str(data), "train_roles": ["assistant", "user"], "system": "Be brief."},
        {"name": "replaced", "path": str(data), "system": {"content": "New.", "replace": True}, "train_eot": False},
    ]
    _, out = run(tmp_path, "o", datasets=entries)
    table = rows(out)
    assert [r["source"] for r in table] == [f"{data}:{n}" for n in (1, 1, 1, 2, 2, 2)]  # interleaved evenly
    texts = [r["input_ids"] for r in table]
    loss = [sum(r["loss_mask"]) for r in table]
    plain, users = table[0], table[1]
    assert len(users["input_ids"]) > len(plain["input_ids"])  # a system prompt added
    assert loss[1] > loss[0] and loss[2] < loss[0]  # user text trains; no end of turn
    assert texts[4] == texts[3]  # a system message there already: nothing added
    assert texts[5] != texts[3] and len(texts[5]) == len(texts[3])  # "New." in place of "Old."


def axolotl_and_native(chats: Path) -> tuple[dict, dict]:
    axolotl = {
        "path": str(chats),
        "type": "chat_template",
        "field_messages": "dialog",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {"user": ["human"], "assistant": ["gpt"]},
        "roles_to_train": ["assistant"],
        "train_on_eos": "none",
    }
    native = {
        "path": str(chats),
        "format": "sharegpt",
        "fields": {"conversations": "dialog"},
        "roles": {"human": "user", "gpt": "assistant"},
        "train_roles": ["assistant"],
        "train_eot": False,
    }
    return axolotl, native


def test_an_axolotl_entry_gives_the_native_shards(tmp_path):
    chats = sharegpt_renamed(tmp_path, 12)
    axolotl, native = axolotl_and_native(chats)
    _, a = run(tmp_path, "a", datasets=[axolotl])
    _, b = run(tmp_path, "b", datasets=[native])
    _, c = run(tmp_path, "c", datasets=[{**native, "train_eot": True}])
    assert digests(a) == digests(b) != digests(c)
    assert len(rows(a)) == 12


def test_an_axolotl_option_without_equivalent_says_so(tmp_path):
    with pytest.raises(Exception, match="'all' and 'last' have no equivalent"):
        PrepareConfig.from_mapping({"datasets": [{"path": "x.json", "type": "chat_template", "train_on_eos": "all"}]})


def test_save_to_disk_folder_input(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = [json.loads(line) for line in OPENAI.read_text().splitlines()[:25]]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    dict_folder = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records[:20]), "test": datasets.Dataset.from_list(records[20:])}
    ).save_to_disk(str(dict_folder))
    jsonl = write_jsonl(tmp_path / "same.jsonl", records)
    _, from_folder = run(tmp_path, "f", inputs=[str(folder)])
    _, from_jsonl = run(tmp_path, "j", inputs=[str(jsonl)])
    ids = lambda out: [r["input_ids"] for r in rows(out)]  # noqa: E731
    assert ids(from_folder) == ids(from_jsonl) and len(ids(from_folder)) == 25
    _, test_split = run(tmp_path, "t", datasets=[{"path": str(dict_folder), "split": "test"}])
    _, train_split = run(tmp_path, "r", datasets=[{"path": str(dict_folder)}])
    assert ids(test_split) == ids(from_jsonl)[20:] and ids(train_split) == ids(from_jsonl)[:20]
    sampled, _ = run(tmp_path, "s", datasets=[{"path": str(folder), "sample": 30}])  # Arrow rows counted by batch
    assert sampled["datasets"][0]["available"] == 25 and sampled["records"]["written"] == 30


def test_load_dataset_style_parquet_folder_reads_its_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in OPENAI.read_text().splitlines()[:6]]
    (tmp_path / "repo" / "data").mkdir(parents=True)
    for split, part in (("train", records[:4]), ("test", records[4:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet")
    manifest, _ = run(tmp_path, "o", inputs=[str(tmp_path / "repo")])
    assert manifest["records"]["read"] == 4
    manifest, _ = run(tmp_path, "t", datasets=[{"path": str(tmp_path / "repo"), "split": "test"}])
    assert manifest["records"]["read"] == 2


def test_hub_dataset_offline_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"datasets": [{"path": "hf://datasets/someorg/somedata"}]}))
    args = ["prepare", "--config", str(config), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("lossmask: error:") == 1
    assert "HF_HUB_OFFLINE is set" in result.output and "--repo-type dataset --local-dir DIR" in result.output


def test_ray_tables_carry_dataset_and_digest():
    from lossmask.engines.tables import records_to_table, result_to_table, table_to_records, table_to_result
    from lossmask.pipeline.batch import JobContext, process_batch
    from lossmask.pipeline.inputs import InputPlan

    config = PrepareConfig.from_mapping(
        {"tokenizer": str(FIXTURE_TOKENIZER), "datasets": [{"path": str(OPENAI), "sample": 3}], "dedup": "exact"}
    )
    records = list(InputPlan.build(config).records("train"))
    back = table_to_records(records_to_table(records))
    assert [r.extra for r in back] == [r.extra for r in records] and back[0].extra["dataset"] == 0
    result = process_batch(back, JobContext.from_config(config))
    again = table_to_result(result_to_table(result))
    assert [(o.dataset, o.digest) for o in again.outcomes] == [(o.dataset, o.digest) for o in result.outcomes]
    assert all(o.digest is not None and len(o.digest) == 16 for o in again.outcomes)


@pytest.mark.ray
def test_ray_engine_mixes_and_dedups_like_the_local_engine(tmp_path):
    ray = pytest.importorskip("ray")
    chats = sharegpt_renamed(tmp_path)
    options = {**mixture(chats), "dedup": "exact", "batch_size": 32}
    _, local = run(tmp_path, "local", **options, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        manifest, on_ray = run(tmp_path, "ray", **options, engine="ray")
    finally:
        ray.shutdown()
    assert digests(on_ray) == digests(local)
    assert manifest["records"]["by_reason"]["dropped"].get("duplicate", 0) > 0  # the fixture repeats itself


@pytest.mark.slow
@pytest.mark.parametrize("pack", [None, 128])
def test_killed_mixture_with_dedup_resumes_byte_identical(tmp_path, pack):
    """A run of two datasets, an eval split and dedup, killed after some train shards, then run again: the
    resumed run recovers the digests of the records before its checkpoint and writes the same bytes."""
    import os
    import signal
    import subprocess
    import sys

    chats = sharegpt_renamed(tmp_path)
    options = {**mixture(chats), "dedup": "exact", "shard_max_rows": 20, "batch_size": 16}
    if pack:
        options.update(pack=pack, shard_max_rows=5, pack_window=50)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**options, "tokenizer": str(FIXTURE_TOKENIZER)}))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "lossmask.cli", "prepare", "--config", str(job), "--out", str(out), "-q"]

    subprocess.run(command(tmp_path / "reference"), check=True)
    out = tmp_path / "out"
    # the eval part (44 records, 2 or 3 finished shards) runs first: a later checkpoint is the train part's
    killed = subprocess.run(command(out), env={**os.environ, "LOSSMASK_CRASH_AT": "checkpoint-saved:6"})
    assert killed.returncode == -signal.SIGKILL
    assert (out / "_checkpoint.json").exists() and not (out / "_manifest.json").exists()
    first = (out / "shard-00000.arrow").stat().st_mtime_ns
    subprocess.run(command(out), check=True)
    assert (out / "shard-00000.arrow").stat().st_mtime_ns == first  # resumed: the finished shards were kept
    assert digests(out) == digests(tmp_path / "reference")
    manifest = json.loads((out / "_manifest.json").read_text())
    reference = json.loads((tmp_path / "reference" / "_manifest.json").read_text())
    assert manifest["datasets"] == reference["datasets"] and manifest["records"] == reference["records"]


def test_eval_and_dedup_on_plain_inputs(tmp_path):
    """`inputs:` (or INPUT arguments) is one dataset: eval and dedup apply, the rejects keep their old shape."""
    lines = OPENAI.read_text().splitlines()[:20]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines + lines[:3] + ["{broken"]) + "\n")
    manifest, out = run(tmp_path, "o", inputs=[str(data)], eval={"fraction": 0.25}, dedup="exact", seed=1)
    held = json.loads((out / "eval" / "_manifest.json").read_text())
    assert held["records"]["read"] == 6 and manifest["records"]["read"] == 18  # 24 records: 6 held out
    assert manifest["datasets"][0]["name"] == "inputs" and manifest["datasets"][0]["available"] == 24
    dropped = held["records"]["by_reason"]["dropped"].get("duplicate", 0)
    dropped += manifest["records"]["by_reason"]["dropped"].get("duplicate", 0)
    assert dropped == 3  # the three repeated lines, wherever the split put them
    assert all("dataset" not in r for r in read_rejects(out))


def test_the_cli_summary_names_each_dataset_and_the_eval_part(tmp_path):
    chats = sharegpt_renamed(tmp_path)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(mixture(chats)))
    out = tmp_path / "o"
    args = ["prepare", "--config", str(config), "--tokenizer", str(FIXTURE_TOKENIZER), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "oai: 181 sampled, 181 written, 0 rejected, 0 dropped" in result.output
    assert "sg: 80 sampled, 80 written, 0 rejected, 0 dropped" in result.output
    evaluation = json.loads((out / "eval" / "_manifest.json").read_text())
    assert f"eval:     {out}/eval/ (44 records written, {evaluation['totals']['rows']} rows" in result.output
