"""`lossmask prepare` of preference data (pipeline/pairs.py): every shape, on the fixture tokenizer and on the
kit's, written as pair rows whose counted tokens are exactly each side's completion and its stop, with the prompt
identical and uncounted on both sides; refusals with their reasons; lengths; KTO rows; workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lossmask.errors import SetupError
from lossmask.pipeline.batch import JobContext, process_batch
from lossmask.pipeline.config import PrepareConfig
from lossmask.schemas.records import RawRecord, SourceRef
from tokenizers import Tokenizer

from .support import FIXTURE_TOKENIZER, REALWORLD, read_rejects, read_rows, realworld, run_prepare, write_jsonl

KIT_TOKENIZERS = REALWORLD / "tokenizers"
KIT_DATA = REALWORLD / "data"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# Each shape TRL reads, and the completion text of each side.
SHAPES: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    "raw text": ({"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}, (" 4", " 5")),
    "conversational": (
        {"prompt": [user("What is 2+2?")], "chosen": [assistant("It is 4.")], "rejected": [assistant("It is 5.")]},
        ("It is 4.", "It is 5."),
    ),
    "multi-turn prompt": (
        {
            "prompt": [user("Hi"), assistant("Hello, how can I help?"), user("What is 2+2?")],
            "chosen": [assistant("Four.")],
            "rejected": [assistant("Five, I think")],
        },
        ("Four.", "Five, I think"),
    ),
    "implicit prompt": (
        {
            "chosen": [user("Capital of France?"), assistant("Paris.")],
            "rejected": [user("Capital of France?"), assistant("Lyon, of course.")],
        },
        ("Paris.", "Lyon, of course."),
    ),
    "implicit prompt beside a string": (
        {
            "prompt": "Capital of France?",
            "chosen": [user("Capital of France?"), assistant("Paris.")],
            "rejected": [user("Capital of France?"), assistant("Marseille.")],
        },
        ("Paris.", "Marseille."),
    ),
}


def side_tokens(row: dict[str, Any], side: str) -> tuple[list[int], np.ndarray]:
    """A side's unshifted tokens, and the indices of the tokens that count (target k is token k + 1)."""
    tokens = [*row[f"{side}_input_ids"], row[f"{side}_target_ids"][-1]]
    return tokens, np.flatnonzero(np.asarray(row[f"{side}_loss_mask"])) + 1


def check_pair(row: dict[str, Any], tokenizer: Tokenizer, completions: tuple[str, str], stop: str) -> None:
    """The pair rules a trainer's numbers rely on, each of which a wrong renderer breaks."""
    p = row["prompt_length"]
    chosen, _ = side_tokens(row, "chosen")
    rejected, _ = side_tokens(row, "rejected")
    assert chosen[:p] == rejected[:p], "the prompt differs between the sides"
    prompt_text = tokenizer.decode(chosen[:p], skip_special_tokens=False)
    for side, completion in zip(("chosen", "rejected"), completions, strict=True):
        tokens, counted = side_tokens(row, side)
        assert not np.asarray(row[f"{side}_loss_mask"])[: p - 1].any(), "a prompt token counts"
        assert counted[0] == p and list(counted) == list(range(p, counted[-1] + 1)), "counted tokens are not one run"
        text = tokenizer.decode(tokens[:p] + [tokens[k] for k in counted], skip_special_tokens=False)
        expected = {prompt_text + completion + stop}
        if tokenizer.token_to_id("▁") is not None:  # SentencePiece decodes a word's "▁" after a control token as " "
            expected.add(prompt_text + " " + completion.lstrip(" ") + stop)
        assert text in expected, f"{side}: counted {text[len(prompt_text) :]!r}"
        stop_id = tokenizer.token_to_id(stop)
        assert [tokens[k] for k in counted].count(stop_id) == 1, "not exactly one counted stop"


def accounted(manifest: dict[str, Any]) -> dict[str, int]:
    records = manifest["records"]
    assert records["read"] == records["written"] + records["rejected"] + records["dropped"]
    return records


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_counts_exactly_each_completion_and_its_stop(tmp_path, shape):
    value, completions = SHAPES[shape]
    manifest, out = run_prepare(tmp_path, [write_jsonl(tmp_path / "pairs.jsonl", [value])])
    assert manifest["layout"] == "pairs" and accounted(manifest)["written"] == 1
    (row,) = read_rows(out)
    assert row["source"].endswith("pairs.jsonl:1") and row["record_index"] == 0
    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    check_pair(row, tokenizer, completions, "<|im_end|>")
    if shape != "raw text":  # the assistant header ends the prompt: it is on neither side's counted part
        prompt = tokenizer.decode(row["chosen_input_ids"][: row["prompt_length"]], skip_special_tokens=False)
        assert prompt.endswith("<|im_start|>assistant\n")


REFUSED = [
    # the prompt's last characters and the completion's first merge into one token
    ({"prompt": "Say hel", "chosen": "lo", "rejected": "p"}, "preference_prompt_boundary"),
    ({"chosen": [user("A"), assistant("x")], "rejected": [user("B"), assistant("y")]}, "preference_prompt_mismatch"),
    ({"prompt": [user("Q")], "chosen": [assistant("same")], "rejected": [assistant("same")]}, None),
    ({"prompt": [user("Q")], "chosen": [], "rejected": [assistant("y")]}, "preference_empty_side"),
    ({"prompt": "Q", "chosen": "x"}, "missing_field"),
]


def test_refused_pairs_are_counted_with_their_reason(tmp_path):
    good = SHAPES["conversational"][0]
    path = write_jsonl(tmp_path / "pairs.jsonl", [good] + [value for value, _ in REFUSED] + [good])
    manifest, out = run_prepare(tmp_path, [path])
    records = accounted(manifest)
    assert (records["read"], records["written"], records["rejected"]) == (7, 2, 5)
    reasons = [r["reason"] for r in read_rejects(out)]
    expected = [reason or "preference_identical_sides" for _, reason in REFUSED]
    assert reasons == expected
    assert [r["record_index"] for r in read_rows(out)] == [0, 6]


def long_pair(prompt_words: int, chosen: str = " yes", rejected: str = " no") -> dict[str, Any]:
    return {"prompt": " ".join(f"w{i}" for i in range(prompt_words)), "chosen": chosen, "rejected": rejected}


def test_max_length_cuts_the_prompt_from_the_left_and_drops_pairs_whose_completions_would_be_cut(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [long_pair(40), long_pair(2), long_pair(2, " " + " ".join(["long"] * 40)), SHAPES["conversational"][0]],
    )
    _, full_out = run_prepare(tmp_path, [path], out_name="full")
    manifest, out = run_prepare(tmp_path, [path], max_length=16)
    records = accounted(manifest)
    assert (records["written"], records["dropped"]) == (3, 1) and records["by_reason"]["dropped"] == {"too_long": 1}
    (drop,) = read_rejects(out)
    assert drop["status"] == "dropped" and drop["source"].endswith(":3")
    whole = {r["record_index"]: r for r in read_rows(full_out)}
    for row in read_rows(out):
        before = whole[row["record_index"]]
        for side in ("chosen", "rejected"):
            assert len(row[f"{side}_input_ids"]) <= 16
            cut = before["prompt_length"] - row["prompt_length"]
            assert row[f"{side}_input_ids"] == before[f"{side}_input_ids"][cut:]  # the prompt's end kept whole
            assert row[f"{side}_num_loss_tokens"] == before[f"{side}_num_loss_tokens"]  # every completion token
        assert (row["prompt_length"] < before["prompt_length"]) == (row["record_index"] in (0, 3))
        assert bool(row["flags"] & 1) == (row["record_index"] in (0, 3))  # RowFlag.TRUNCATED
    _, dropped_out = run_prepare(tmp_path, [path], max_length=16, overflow="drop", out_name="drop")
    assert [r["record_index"] for r in read_rows(dropped_out)] == [1]


def test_kto_rows_train_the_judged_answer_with_its_label(tmp_path):
    records = [
        {"messages": [user("Hi"), assistant("Hello!")], "label": True},
        {"messages": [user("Hi"), assistant("Earlier answer"), user("Again?"), assistant("Go away.")], "label": False},
        {"prompt": "2 + 2 =", "completion": " 4", "label": True},
    ]
    manifest, out = run_prepare(tmp_path, [write_jsonl(tmp_path / "kto.jsonl", records)])
    assert manifest["layout"] == "kto" and accounted(manifest)["written"] == 3
    rows = read_rows(out)
    assert [r["label"] for r in rows] == [True, False, True]
    tokenizer = Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json"))
    counted = [
        tokenizer.decode(
            [t for t, m in zip(r["target_ids"], r["loss_mask"], strict=True) if m], skip_special_tokens=False
        )
        for r in rows
    ]
    assert counted == ["Hello!<|im_end|>", "Go away.<|im_end|>", " 4<|im_end|>"]
    # --max-length: the earliest turns go first, the judged answer is never cut; an answer that cannot fit drops
    manifest, short = run_prepare(tmp_path, [tmp_path / "kto.jsonl"], max_length=12, out_name="short")
    whole = {r["record_index"]: r for r in rows}
    kept = read_rows(short)
    assert accounted(manifest)["written"] == len(kept) >= 1
    for row in kept:
        assert len(row["input_ids"]) <= 12
        assert row["num_loss_tokens"] == whole[row["record_index"]]["num_loss_tokens"]
        assert row["input_ids"][-3:] == whole[row["record_index"]]["input_ids"][-3:]


def test_a_job_does_not_mix_pairs_with_other_data(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [SHAPES["raw text"][0]])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [user("Q"), assistant("A")]}])
    with pytest.raises(SetupError, match="one layout"):
        run_prepare(tmp_path, [pairs, sft])
    with pytest.raises(SetupError, match="--pack"):
        run_prepare(tmp_path, [pairs], pack=64)


@pytest.mark.slow
def test_one_and_two_workers_write_the_same_bytes(tmp_path):
    values = [value for value, _ in SHAPES.values()] * 6 + [value for value, _ in REFUSED]
    path = write_jsonl(tmp_path / "pairs.jsonl", values)
    _, one = run_prepare(tmp_path, [path], workers=1, batch_size=4, out_name="one")
    _, two = run_prepare(tmp_path, [path], workers=2, batch_size=4, out_name="two")
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        if name.endswith(".arrow") or name == "_rejects.jsonl":
            assert (one / name).read_bytes() == (two / name).read_bytes(), name


# A property: for random prompts and answers of words, each pair written has the same prompt tokens on both
# sides, none of them counted, and counts exactly each completion and one stop.

_CONTEXT: dict[str, JobContext] = {}


def fixture_context(fmt: str) -> JobContext:
    if fmt not in _CONTEXT:
        config = PrepareConfig(inputs=["-"], out="-", tokenizer=str(FIXTURE_TOKENIZER), format=fmt)
        _CONTEXT[fmt] = JobContext.from_config(config)
    return _CONTEXT[fmt]


words = st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "2", "+", "=", "?", "Yes", "no"]), min_size=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=words, chosen=words, rejected=words, chat=st.booleans())
def test_random_pairs_share_their_prompt_tokens_and_count_only_their_completions(prompt, chosen, rejected, chat):
    a, b = " ".join(chosen), " ".join(rejected)
    if chat:
        value: dict[str, Any] = {
            "prompt": [user(" ".join(prompt))],
            "chosen": [assistant(a)],
            "rejected": [assistant(b)],
        }
        completions = (a, b)
    else:
        value = {"prompt": " ".join(prompt) + ":", "chosen": " " + a, "rejected": " " + b}
        completions = (" " + a, " " + b)
    raw = RawRecord(SourceRef("random.jsonl", 1, 0), value=value, extra={"format": "preference"})
    result = process_batch([raw], fixture_context("preference"))
    (outcome,) = result.outcomes
    if a == b:
        assert outcome.reason == "preference_identical_sides"
        return
    assert outcome.status == "written", outcome
    (row,) = result.batch.to_pylist()
    check_pair(row, Tokenizer.from_file(str(FIXTURE_TOKENIZER / "tokenizer.json")), completions, "<|im_end|>")


# The kit: its tokenizers with their own chat templates, its preference data.

KIT_NAMES = sorted(p.name for p in KIT_TOKENIZERS.iterdir() if p.is_dir()) if KIT_TOKENIZERS.is_dir() else []


def kit_stop(out: Path, raw: bool) -> str:
    manifest = json.loads((out / "_manifest.json").read_text(encoding="utf-8"))
    return manifest["tokenizer"]["special_tokens"]["eos_token"] if raw else manifest["template"]["stop_sequences"][0]


@realworld
@pytest.mark.realworld
@pytest.mark.parametrize("name", KIT_NAMES)
def test_each_shape_on_the_kit_tokenizers(tmp_path, name):
    """Each shape the tokenizer's template renders: the pair rules hold; a refusal is one the template explains."""
    tokenizer = Tokenizer.from_file(str(KIT_TOKENIZERS / name / "tokenizer.json"))
    written = 0
    for shape, (value, completions) in SHAPES.items():
        folder = tmp_path / shape.replace(" ", "-")
        folder.mkdir()
        manifest, out = run_prepare(
            folder, [write_jsonl(folder / "pairs.jsonl", [value])], tokenizer=str(KIT_TOKENIZERS / name)
        )
        if accounted(manifest)["written"] == 0:
            (reject,) = read_rejects(out)
            assert reject["reason"] in {"template_rule", "template_dropped_message"}, (shape, reject)
            continue
        (row,) = read_rows(out)
        check_pair(row, tokenizer, completions, kit_stop(out, shape == "raw text"))
        written += 1
    assert written >= 3


@realworld
@pytest.mark.realworld
def test_sides_that_tokenize_the_prompt_apart_are_refused(tmp_path):
    """llama3-style splits the header's "\n\n" before a letter but not before a digit: the sides would read
    different prompts, so the pair is refused, not re-split."""
    value = {"prompt": [user("What is 2+2?")], "chosen": [assistant("4")], "rejected": [assistant("Five")]}
    tokenizer = str(KIT_TOKENIZERS / "llama3-style")
    manifest, out = run_prepare(tmp_path, [write_jsonl(tmp_path / "p.jsonl", [value])], tokenizer=tokenizer)
    assert accounted(manifest)["rejected"] == 1
    assert [r["reason"] for r in read_rejects(out)] == ["preference_prompt_boundary"]


@realworld
@pytest.mark.realworld
@pytest.mark.parametrize("name", ["fixture", "smollm2", "llama3-style"])
def test_kit_stack_exchange_paired_all_written_or_each_refusal_explained(tmp_path, name):
    data = KIT_DATA / "torchtune" / "stack_exchange_paired_tiny.json"
    tokenizer_path = FIXTURE_TOKENIZER if name == "fixture" else KIT_TOKENIZERS / name
    fields = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
    manifest, out = run_prepare(tmp_path, [data], tokenizer=str(tokenizer_path), fields=fields)
    records = accounted(manifest)
    assert records["read"] == 25
    values = json.loads(data.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(tokenizer_path / "tokenizer.json"))
    stop = kit_stop(out, raw=True)
    for row in read_rows(out):
        value = values[row["record_index"]]
        check_pair(row, tokenizer, (value["response_j"], value["response_k"]), stop)
    if name == "fixture":
        assert records["written"] == 25
    for reject in read_rejects(out):  # a question that ends where its answer begins: "```" + "```" is one token
        assert reject["reason"] == "preference_prompt_boundary"
        index = int(reject["source"].rsplit("[", 1)[1].rstrip("]"))
        value = values[index]
        assert value["question"].endswith("```") and "```" in (value["response_j"][:3], value["response_k"][:3])
    assert records["written"] >= 19


@realworld
@pytest.mark.realworld
@pytest.mark.parametrize("name", ["smollm2", "llama3-style"])
def test_kit_kto_demo_is_written_with_its_labels(tmp_path, name):
    data = KIT_DATA / "llamafactory" / "kto_en_demo.json"
    manifest, out = run_prepare(tmp_path, [data], tokenizer=str(KIT_TOKENIZERS / name))
    assert manifest["layout"] == "kto" and accounted(manifest)["written"] == 300
    values = json.loads(data.read_text(encoding="utf-8"))
    table = pa.ipc.open_file(next(out.glob("*.arrow"))).read_all()
    assert table.column("label").to_pylist() == [v["label"] for v in values]
    tokenizer = Tokenizer.from_file(str(KIT_TOKENIZERS / name / "tokenizer.json"))
    stop = kit_stop(out, raw=False)
    for row in table.slice(0, 40).to_pylist():
        answer = values[row["record_index"]]["messages"][-1]["content"]
        counted = [t for t, m in zip(row["target_ids"], row["loss_mask"], strict=True) if m]
        assert tokenizer.decode(counted, skip_special_tokens=False).strip() == answer.strip() + stop


def test_a_stop_the_data_writes_before_the_templates_is_no_double_eos(tmp_path):
    """With control tokens allowed in content, an answer that ends with the stop gets a second one from the
    template: refused, since log p of the side would count a token emitted after the model stopped."""
    value = {"prompt": [user("Q?")], "chosen": [assistant("Yes.<|im_end|>")], "rejected": [assistant("No.")]}
    path = write_jsonl(tmp_path / "pairs.jsonl", [value])
    manifest, out = run_prepare(tmp_path, [path], special_tokens_in_content="allow")
    assert accounted(manifest)["rejected"] == 1
    assert [r["reason"] for r in read_rejects(out)] == ["preference_double_stop"]
    manifest, out = run_prepare(tmp_path, [path], out_name="escaped")  # escaped (the default): plain text, one stop
    assert accounted(manifest)["written"] == 1


@pytest.mark.parametrize("stage", ["parse", "render"])
def test_a_fault_in_a_pair_rejects_only_its_record(stage, tmp_path, monkeypatch):
    """Per-record isolation holds for pair jobs: the batch is rerun record by record, each in the pairs layout."""
    from lossmask.pipeline import faults

    values = [
        {"prompt": f"Question {k}{' ' + faults.FAULT_MARKER if k == 2 else ''}:", "chosen": " yes", "rejected": " no"}
        for k in range(5)
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", values)
    _, clean = run_prepare(tmp_path, [path], out_name="clean", batch_size=4)
    monkeypatch.setattr(faults, "_FAULT_STAGE", stage)
    manifest, out = run_prepare(tmp_path, [path], out_name="faulty", batch_size=4)
    assert accounted(manifest)["rejected"] == 1
    assert [(r["reason"], r["source"].rsplit(":", 1)[1]) for r in read_rejects(out)] == [("internal_error", "3")]
    assert read_rows(out) == [r for r in read_rows(clean) if r["record_index"] != 2]


RUN = """
import json, sys
from lossmask.jobs.prepare import prepare
from lossmask.pipeline.config import PrepareConfig
prepare(PrepareConfig.from_mapping(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["shard-half-written:3", "checkpoint-saved:2"])
def test_a_killed_pair_job_resumes_byte_identical(point, tmp_path):
    values = [value for value, _ in SHAPES.values()] * 8 + [value for value, _ in REFUSED]
    path = write_jsonl(tmp_path / "pairs.jsonl", values)
    options = {"inputs": [str(path)], "tokenizer": str(FIXTURE_TOKENIZER), "shard_max_rows": 5, "batch_size": 4}

    def run(out: Path, crash: str | None = None) -> int:
        env = {**os.environ, **({"LOSSMASK_CRASH_AT": crash} if crash else {})}
        args = [sys.executable, "-c", RUN, json.dumps({**options, "out": str(out), "workers": 1})]
        return subprocess.run(args, env=env, capture_output=True, check=False).returncode

    assert run(tmp_path / "reference") == 0
    assert run(tmp_path / "out", point) != 0  # killed
    assert run(tmp_path / "out") == 0  # the same job again: resumes
    reference = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert reference == sorted(p.name for p in (tmp_path / "out").iterdir())
    for name in reference:
        if name.endswith(".arrow") or name == "_rejects.jsonl":
            assert (tmp_path / "reference" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
